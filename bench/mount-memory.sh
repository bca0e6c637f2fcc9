#!/usr/bin/env bash
# Does a mount's memory stay flat however many files it meets? Creates FILES files (1,000
# a directory) in a subtree the mount's site owns (so the mount holds its delegation and
# caches it), then walks them twice with `find -printf %s` (a lookup and attributes of
# each) and `cat` of every 50th (an open each), printing the mount's resident memory as it goes. Every
# table the mount keeps is bounded, so the figure should level off, not grow with FILES.
# Needs root (a FUSE mount). Usage:
#   bench/mount-memory.sh [FILES]        (default 1000000; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-1000000}
WORK=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}

scripts/prereqs.sh
. scripts/env.sh
. bench/common.sh
echo "==> building (release)"
cargo build --release --workspace -q
BIN=target/release

RUN="$WORK/memory"
PIDS=()
cleanup() {
  mountpoint -q "$RUN/mnt" 2>/dev/null && { fusermount3 -u "$RUN/mnt" 2>/dev/null || umount -l "$RUN/mnt"; }
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$RUN" && mkdir -p "$RUN/mnt"

tls_init "$RUN/tls" "$BIN/mobilusctl"
META=()
for id in 1 2 3; do
  d="$RUN/meta-$id"; mkdir -p "$d"
  join=(--init); [ $id = 1 ] || join=(--join "${META[0]}")
  "$BIN/mobilus-meta" $(tls meta site-a "meta-$id") --id $id --listen 127.0.0.1:0 --data-dir "$d/data" --ready-file "$d/ready" \
    "${join[@]}" 2>"$d/log" & PIDS+=($!)
  META+=("$(ready "$d/ready")")
done
METAS=$(IFS=,; echo "${META[*]}")
"$BIN/mobilus-data" $(tls data site-a data-a) --site site-a --listen 127.0.0.1:0 --data-dir "$RUN/data-a" \
  --meta "$METAS" --ready-file "$RUN/data-a.ready" 2>"$RUN/data-a.log" & PIDS+=($!)
ready "$RUN/data-a.ready" >/dev/null
"$BIN/mobilus-mount" $(tls mount site-a mount-a) --site site-a --meta "$METAS" --ready-file "$RUN/mount.ready" \
  "$RUN/mnt" 2>"$RUN/mount.log" & MOUNT=$!; PIDS+=($MOUNT)
ready "$RUN/mount.ready" >/dev/null
mkdir "$RUN/mnt/tree"
for _ in $(seq 50); do
  "$BIN/mobilusctl" $(tls admin '' admin) --meta "$METAS" subtree create /tree --owner site-a >/dev/null 2>&1 && break
  sleep 0.2
done

rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$MOUNT/status"; }
echo "==> creating $FILES files through the mount (RSS $(rss) MiB)"
start=$(date +%s)
python3 - "$RUN/mnt/tree" "$FILES" <<'PY'
import os, sys
from concurrent.futures import ThreadPoolExecutor
root, n = sys.argv[1], int(sys.argv[2])
def make(d):
    path = os.path.join(root, f"d{d:05}")
    os.mkdir(path)
    for i in range(min(1000, n - d * 1000)):
        # Empty: one metadata commit each, no data-node write.
        open(os.path.join(path, f"f{i:04}"), "wb").close()
with ThreadPoolExecutor(16) as pool:
    list(pool.map(make, range((n + 999) // 1000)))
PY
echo "    created in $(( $(date +%s) - start )) s; RSS $(rss) MiB"
for pass in 1 2; do
  echo "==> walk $pass: find -printf %s of every file, cat of every 50th"
  start=$(date +%s)
  ( find "$RUN/mnt/tree" -type f -printf '%s\n' | wc -l ) &
  finder=$!
  while kill -0 $finder 2>/dev/null; do sleep 5; echo "    $(( $(date +%s) - start )) s: RSS $(rss) MiB"; done
  wait $finder
  find "$RUN/mnt/tree" -type f -name 'f??[05]0' -exec cat {} + | wc -c
  echo "    walk $pass took $(( $(date +%s) - start )) s; RSS $(rss) MiB"
done
grep -c "holding the subtree's delegation" "$RUN/mount.log" | sed 's/^/delegations taken: /'
