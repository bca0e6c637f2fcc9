#!/usr/bin/env bash
# Does a mount's memory stay bounded while many files are written at once? A fresh
# one-site local cluster (`mobilusctl dev up`), then ten `dd bs=1M` of 256 MiB each into
# its mount at the same time; prints the mount's peak resident memory (VmHWM) and the
# time, and checks one file reads back. The mount's write budget (`--write-buffer-mib`,
# default 512) bounds what the writers buffer together. Needs root. Usage:
#   bench/many-writers.sh [BIN]   (BIN: a folder of release binaries, default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release}
D=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}/many-writers
. bench/common.sh
dev_site "$BIN" "$D"
M=$D/mnt/site-a
SRC=$D/random-256m
head -c $((256 << 20)) /dev/urandom >"$SRC"
PID=$(cat "$D/mount-site-a/pid")
start=$(date +%s%N)
for i in $(seq 10); do dd if="$SRC" of="$M/w$i" bs=1M status=none & done
wait
end=$(date +%s%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
echo "10 writers of 256 MiB: mount peak RSS $((peak / 1024)) MiB, $(((end - start) / 1000000)) ms"
cmp "$SRC" "$M/w7" && echo "w7 reads back"
