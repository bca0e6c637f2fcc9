#!/usr/bin/env bash
# One command, one run, one disk: `juicefs bench` (1 GiB big file with 1 MiB I/Os, 100
# small files of 128 KiB, stat of 100 files) on
#   (a) a plain directory, (b) bindfs --multithreaded over it (a FUSE passthrough),
#   (c) JuiceFS 0.14.2 (SQLite metadata, local-disk storage), the peer we compare with,
#   (d) a Mobilus mount of a local cluster: 3 metadata members (Raft), 1 data node, in
#       the shared root (no owner: every mount keeps 1 s TTLs), and
#   (e) the same mount in a subtree its site owns (`mobilus-owned`: the mount holds the
#       subtree's delegation and caches it authoritatively);
# then every line with its ratio to JuiceFS. The small-file and stat phases (100 files
# each) move by tens of percent between runs, so after the first round (big file too)
# ROUNDS-1 more rounds of them alone run, the systems taking turns, and each small-file
# line is the median of all rounds. Needs root (mounts). Usage:
#   [ROUNDS=3] bench/fs-bench.sh [BIG_FILE_MIB]        (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
BIG=${1:-1024}
ROUNDS=${ROUNDS:-3}
WORK=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}

scripts/prereqs.sh
. scripts/env.sh
. bench/common.sh
command -v bindfs >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bindfs >/dev/null
install_juicefs
echo "==> building (release)"
cargo build --release --workspace -q
BIN=target/release

RUN="$WORK/run"
PIDS=()
cleanup() {
  for m in "$RUN/mnt-mobilus" "$RUN/mnt-jfs" "$RUN/mnt-bindfs"; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
  done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$RUN" && mkdir -p "$RUN"/{plain,bindfs-src,mnt-bindfs,jfs-bucket,mnt-jfs,mnt-mobilus}


echo "==> (b) bindfs --multithreaded"
bindfs --multithreaded "$RUN/bindfs-src" "$RUN/mnt-bindfs"

echo "==> (c) JuiceFS $("$JFS" --version | awk '{print $3}')"
"$JFS" format --storage file --bucket "$RUN/jfs-bucket/" "sqlite3://$RUN/jfs.db" bench >/dev/null 2>&1
"$JFS" mount -d "sqlite3://$RUN/jfs.db" "$RUN/mnt-jfs" >/dev/null 2>&1
ready_jfs=0
for _ in $(seq 100); do mountpoint -q "$RUN/mnt-jfs" && { ready_jfs=1; break; }; sleep 0.1; done
[ $ready_jfs = 1 ] || { echo "JuiceFS did not mount" >&2; exit 1; }

echo "==> (d) Mobilus: 3 metadata members, 1 data node, 1 mount"
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
# The node is on this host: the mount reads its chunk files directly (short-circuit).
"$BIN/mobilus-mount" $(tls mount site-a mount-a) --site site-a --meta "$METAS" --ready-file "$RUN/mount.ready" \
  --local-chunks "$RUN/data-a" "$RUN/mnt-mobilus" 2>"$RUN/mount.log" & PIDS+=($!)
ready "$RUN/mount.ready" >/dev/null
mkdir -p "$RUN/mnt-mobilus/owned"
for _ in $(seq 50); do
  "$BIN/mobilusctl" $(tls admin '' admin) --meta "$METAS" subtree create /owned --owner site-a >/dev/null 2>&1 && break
  sleep 0.2
done
"$BIN/mobilusctl" $(tls admin '' admin) --meta "$METAS" subtree status /owned >&2

bench() {  # $1 label, $2 dir, $3 round (from 1; the first one also writes a big file)
  echo "==> juicefs bench on $1 (round $3)" >&2
  local big=$BIG; [ "$3" = 1 ] || big=0
  mkdir -p "$2/bench$3"
  "$JFS" bench --big-file-size "$big" --small-file-size 0.125 --small-file-count 100 \
    --block-size 1 "$2/bench$3" 2>&1 | tee "$RUN/bench-$1.txt" >&2
  # Progress bars leave carriage returns at the start of lines.
  awk -v label="$1" '
    { sub(/^.*\r/, "") }
    /^Written a big file/   { v=$(NF-1); gsub(/[()]/,"",v); bw=v }
    /^Read a big file/      { v=$(NF-1); gsub(/[()]/,"",v); br=v }
    /^Written .* small/     { sw=$(NF-6) }
    /^Read .* small/        { sr=$(NF-6) }
    /^Stated/               { st=$(NF-6) }
    END { print label, (bw == "" ? "-" : bw), (br == "" ? "-" : br), sw, sr, st }' "$RUN/bench-$1.txt"
}
for round in $(seq "$ROUNDS"); do
  bench plain "$RUN/plain" "$round"
  bench bindfs "$RUN/mnt-bindfs" "$round"
  bench juicefs "$RUN/mnt-jfs" "$round"
  bench mobilus "$RUN/mnt-mobilus" "$round"
  bench mobilus-owned "$RUN/mnt-mobilus/owned" "$round"
done > "$RUN/results.txt"

echo
python3 - "$RUN/results.txt" "$BIG" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault(f[0], []).append(f[1:])
# Big-file lines from the first round; small-file lines the median of every round.
rows = {}
for name, rs in runs.items():
    big = [float(x) for x in rs[0][:2]]
    small = [statistics.median(float(r[i]) for r in rs) for i in range(2, 5)]
    rows[name] = big + small
ref = rows["juicefs"]
names = [f"write {sys.argv[2]} MiB file, 1 MiB I/O (MiB/s)", f"read {sys.argv[2]} MiB file, 1 MiB I/O (MiB/s)",
         "write 100 x 128 KiB files (files/s)", "read 100 x 128 KiB files (files/s)", "stat 100 files (files/s)"]
systems = ["plain", "bindfs", "juicefs", "mobilus", "mobilus-owned"]
print(f"{'':44}" + "".join(f"{s:>18}" for s in systems))
for i, n in enumerate(names):
    cells = [f"{rows[s][i]:>9.1f} ({rows[s][i] / ref[i]:4.2f}x)" for s in systems]
    print(f"{n:44}" + "".join(f"{c:>18}" for c in cells))
print(f"\n(ratios are to JuiceFS 0.14.2; same run, same disk; small-file lines: median of {len(runs['juicefs'])} rounds)")
PY
