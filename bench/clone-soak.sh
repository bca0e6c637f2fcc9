#!/usr/bin/env bash
# Clones at scale, through real mounts, with reference copies. On a dev cluster (3
# metadata members, two sites, release build):
#   1. FILES files of 1 KiB (distinct contents, so one chunk each) in /soak, a subtree
#      site-a owns, written through site-a's mount and to a reference folder on disk;
#   2. a clone whose mobilusctl is SIGKILLed halfway: no copy shows, the source's writers
#      wait at most the freeze, and fsck is clean;
#   3. a clone across a SIGKILL of the metadata leader: a whole copy, or none (then made
#      again), and fsck is clean;
#   4. the copy read back whole through the mount against the reference (diff -r), and
#      the data nodes' chunk files counted before and after (no new one);
#   5. overwrites, deletes, truncates and appends on both sides, each side then compared
#      with its own reference copy.
# Prints the clone's time and entries per second. Needs root (FUSE). Usage:
#   bench/clone-soak.sh [FILES]        (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-100000}
WORK=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}

scripts/prereqs.sh
. scripts/env.sh
echo "==> building (release)"
cargo build --release --workspace -q
CTL=$PWD/target/release/mobilusctl
RUN="$WORK/clone-soak"
DEV="$RUN/dev"
cleanup() { "$CTL" dev down --dir "$DEV" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$RUN" && mkdir -p "$RUN/ref"
"$CTL" dev up --dir "$DEV" >/dev/null
ctl() { "$CTL" --config "$DEV/cluster.toml" "$@"; }
A="$DEV/mnt/site-a"
chunks() { find "$DEV"/data-site-*/data/chunks -type f 2>/dev/null | wc -l; }
fsck_clean() {
  ctl fsck --output json >"$RUN/fsck.json" || { cat "$RUN/fsck.json"; echo "fsck found problems" >&2; exit 1; }
}

echo "==> $FILES files of 1 KiB in /soak (a subtree site-a owns), and their reference copies"
mkdir "$A/soak"
for _ in $(seq 50); do ctl subtree create /soak --owner site-a >/dev/null 2>&1 && break; sleep 0.2; done
start=$(date +%s.%N)
python3 - "$A/soak" "$RUN/ref" "$FILES" <<'PY'
import os, sys
from concurrent.futures import ThreadPoolExecutor
mnt, ref, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def make(d):
    for root in (mnt, ref):
        os.makedirs(f"{root}/d{d:04}", exist_ok=True)
    for i in range(d * 1000, min(n, (d + 1) * 1000)):
        body = (f"file {i:08} " * 80)[:1024].encode()
        for root in (mnt, ref):
            with open(f"{root}/d{d:04}/f{i:08}", "wb") as f:
                f.write(body)
with ThreadPoolExecutor(8) as ex:
    list(ex.map(make, range((n + 999) // 1000)))
PY
sync -f "$A/soak" 2>/dev/null || true
echo "    written in $(echo "$(date +%s.%N) - $start" | bc) s"
before=$(chunks)

echo "==> a clone whose mobilusctl is SIGKILLed halfway"
# The binary itself, not the `ctl` function: $! must be mobilusctl's pid.
"$CTL" --config "$DEV/cluster.toml" clone /soak /soak-killed --batch 10 >/dev/null 2>&1 & KILLED=$!
# It shows once the source's delegation is recalled (its holder commits what it
# answered first: thousands of closes just written).
for _ in $(seq 600); do
  [ "$(ctl clone ls --output json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" != 0 ] && break
  sleep 0.05
done
kill -9 $KILLED 2>/dev/null || true
wait $KILLED 2>/dev/null || true
[ -e "$A/soak-killed" ] && { echo "a killed clone showed" >&2; exit 1; }
# (A copy of an existing file: no new chunk, so the count below stays exact.)
t=$(date +%s.%N); cp "$A/soak/d0000/f00000000" "$A/soak/late"; rm "$A/soak/late"
echo "    nothing shows; a write to the source waited $(echo "$(date +%s.%N) - $t" | bc) s (about the 10 s freeze at most)"
ctl clone ls
[ "$(ctl clone ls --output json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] \
  || { echo "the killed clone was not caught halfway" >&2; exit 1; }

echo "==> a clone timed (the unfinished one is removed first)"
ctl clone /soak /soak-copy --output json | tee "$RUN/clone.json"
python3 - "$RUN/clone.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print(f"    {c['inodes']} inodes in {c['seconds']:.2f} s: {c['inodes'] / c['seconds']:.0f} entries/s")
PY
fsck_clean

echo "==> a clone across a SIGKILL of the metadata leader"
ctl clone /soak /soak-leader --batch 100 >"$RUN/leader.out" 2>&1 & CLONE=$!
sleep 0.5
leader=$(ctl cluster status --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
kill -9 "$(cat "$DEV/meta-$leader/pid")"
if wait $CLONE; then
  echo "    the clone finished on the new leader"; [ -d "$A/soak-leader" ]
else
  echo "    the clone stopped: $(tail -1 "$RUN/leader.out")"; [ ! -e "$A/soak-leader" ]
fi
"$CTL" dev up --dir "$DEV" >/dev/null
fsck_clean

echo "==> the copy against the reference, and the data nodes' chunk files"
diff -r "$RUN/ref" "$A/soak-copy" && echo "    every file reads identically"
after=$(chunks)
echo "    chunk files: $before before the clones, $after after"
[ "$before" = "$after" ]

echo "==> overwrite, delete, truncate and append on both sides, against their references"
cp -a "$RUN/ref" "$RUN/ref-copy"
python3 - "$A/soak" "$RUN/ref" "$A/soak-copy" "$RUN/ref-copy" "$FILES" <<'PY'
import os, sys
src, ref, copy, ref_copy, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def path(root, i):
    return f"{root}/d{i // 1000:04}/f{i:08}"
def change(roots, i, op):
    for r in roots:
        p = path(r, i)
        if op == "overwrite":
            open(p, "r+b").write(b"overwritten")
        elif op == "delete":
            os.remove(p)
        elif op == "truncate":
            os.truncate(p, 100)
        elif op == "append":
            open(p, "ab").write(b" appended")
ops = ["overwrite", "delete", "truncate", "append"]
for k, i in enumerate(range(0, n, max(1, n // 400))):
    change((src, ref), i, ops[k % 4])
    change((copy, ref_copy), i, ops[(k + 1) % 4])
PY
diff -r "$RUN/ref" "$A/soak" && echo "    the source matches its reference"
diff -r "$RUN/ref-copy" "$A/soak-copy" && echo "    the copy matches its own"
fsck_clean
echo "==> done: fsck clean"
