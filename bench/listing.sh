#!/usr/bin/env bash
# How fast does a mount list a large directory it did not list before? A fresh one-site
# local cluster (`mobilusctl dev up`), 10,000 empty files in a subtree the site owns, then
# 30 listings (`os.listdir`), each after dropping the page cache; prints files/s, the
# median and quartiles. Needs root. Usage:
#   bench/listing.sh [BIN]        (BIN: a folder of release binaries, default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release}
D=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}/listing
. bench/common.sh
dev_site "$BIN" "$D" md
python3 - "$D/mnt/site-a/md" <<'PY'
import os, statistics, sys, time
d = os.path.join(sys.argv[1], "x")
os.mkdir(d)
for i in range(10000):
    os.close(os.open(f"{d}/f{i:06}", os.O_CREAT | os.O_WRONLY, 0o644))
os.sync()
rates = []
for _ in range(30):
    open("/proc/sys/vm/drop_caches", "w").write("3")
    t = time.monotonic()
    n = len(os.listdir(d))
    rates.append(n / (time.monotonic() - t))
    assert n == 10000, n
q = statistics.quantiles(rates, n=4)
print(f"readdir of 10,000 (files/s): median {q[1]:,.0f}, quartiles {q[0]:,.0f} to {q[2]:,.0f}")
PY
