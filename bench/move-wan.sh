#!/usr/bin/env bash
# Moving a subtree across a WAN against copying it: a dev cluster behind an emulated link
# (default 50 ms round trip, 100 Mbit/s; `mobilusctl dev up --wan`), and for each size a
# subtree of that much random data (files of 64 MiB) written at site-a, then
#   mobilus  `subtree move --to site-b --data eager`: the move's own time, the time from
#            the move to the first correct read at site-b (4 KiB at a random offset of
#            the last file, checked against the source), and the time until site-b
#            holds all of it (its follower caught up);
#   rsync    `rsync -a` of the same files from a daemon at site-a's address to site-b,
#            over the same link (the proxy carries port 8873 too): the time until the
#            first file is whole at site-b (the earliest a copied application could
#            read anything) and the time until all are.
# Prints a table with the ratios and writes $WORK/move-wan.json. Needs root. Usage:
#   bench/move-wan.sh [SIZE_MIB ...]        (default: 100 1024)
#   WAN=50ms,100mbit bench/move-wan.sh 100 1024 4096
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100 1024)
WANSHAPE=${WAN:-50ms,100mbit}
WORK=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-move-bench}
PORT=8873

scripts/prereqs.sh
. scripts/env.sh
command -v rsync >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null
BIN=${MOBILUS_BIN:-target/release}
if [ -z "${MOBILUS_BIN:-}" ]; then
  echo "==> building (release)"
  cargo build --release --workspace --bins -q
fi
ctl="$BIN/mobilusctl"
DEV="$WORK/dev"
"$ctl" dev down --dir "$DEV" >/dev/null 2>&1 || true
rm -rf "$WORK"
mkdir -p "$WORK/src"
cleanup() {
  [ -n "${RSYNCD:-}" ] && kill "$RSYNCD" 2>/dev/null || true
  "$ctl" dev down --dir "$DEV" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "==> a dev cluster behind a $WANSHAPE WAN"
"$ctl" dev up --dir "$DEV" --wan "$WANSHAPE" --wan-forward $PORT >/dev/null
cfg="$DEV/cluster.toml"
key=$(awk -F' = ' '/^key/ {print $2}' "$cfg")
ns_a=$(printf 'md-%04x-site-a' "$key")
ns_b=$(printf 'md-%04x-site-b' "$key")
ip_a=$(awk -F'"' '/^addr = "10\.77/ {print $2; exit}' "$cfg" | cut -d: -f1)

# The rsync daemon of site-a serves the source files at site-a's address.
cat > "$WORK/rsyncd.conf" <<EOF
uid = root
gid = root
use chroot = no
[src]
path = $WORK/src
read only = yes
EOF
nsenter --net="/run/netns/$ns_a" -- rsync --daemon --no-detach --address "$ip_a" --port $PORT \
  --config "$WORK/rsyncd.conf" &
RSYNCD=$!
sleep 1

now() { date +%s.%N; }
ms() { python3 -c "print(round(($2 - $1) * 1000))"; }

rows=()
for size in "${SIZES[@]}"; do
  name="m$size"
  files=$(( (size + 63) / 64 ))
  echo "==> $size MiB: writing $files files at site-a"
  mkdir -p "$WORK/src/$name" "$DEV/mnt/site-a/$name"
  "$ctl" --config "$cfg" subtree create "/$name" --owner site-a >/dev/null
  sleep 2
  for i in $(seq 1 $files); do
    each=$(( size - (i - 1) * 64 )); [ $each -gt 64 ] && each=64
    head -c "${each}M" /dev/urandom > "$WORK/src/$name/f$i"
    cp "$WORK/src/$name/f$i" "$DEV/mnt/site-a/$name/f$i"
  done
  sync -f "$DEV/mnt/site-a/$name/f1"
  last="f$files"
  lastsize=$(stat -c %s "$WORK/src/$name/$last")
  off=$(( (RANDOM * 32768 + RANDOM) % (lastsize / 4096) * 4096 ))
  want=$(dd if="$WORK/src/$name/$last" bs=4096 skip=$((off / 4096)) count=1 status=none | md5sum)

  echo "==> $size MiB: mobilus move"
  t0=$(now)
  moved=$("$ctl" --config "$cfg" subtree move "/$name" --to site-b --data eager 2>&1)
  t_moved=$(now)
  got=$(dd if="$DEV/mnt/site-b/$name/$last" bs=4096 skip=$((off / 4096)) count=1 status=none | md5sum)
  t_first=$(now)
  [ "$got" = "$want" ] || { echo "site-b read wrong bytes" >&2; exit 1; }
  while true; do
    # Only a report made since the move counts: site-b's row from before it (a reader's,
    # with nothing to fetch) once made a 4 GiB subtree look followed in 2.7 s.
    since=$(ms "$t_moved" "$(now)")
    done_=$("$ctl" --config "$cfg" replication status "/$name" --output json | SINCE=$since python3 -c '
import json, os, sys
since = float(os.environ["SINCE"])
rows = [r for r in json.load(sys.stdin) if r["site"] == "site-b"]
print(int(bool(rows) and all(r["chunks_to_go"] == 0 and r["cursor"] >= r["head"] and r["reported_ms_ago"] is not None and r["reported_ms_ago"] < since for r in rows)))')
    [ "$done_" = 1 ] && break
    sleep 0.2
  done
  t_all=$(now)
  move_ms=$(echo "$moved" | sed -n 's/.* in \([0-9.]*\) ms.*/\1/p')
  [ -n "$move_ms" ] || move_ms=0

  echo "==> $size MiB: rsync -a over the same link"
  mkdir -p "$WORK/dst-$name"
  r0=$(now)
  nsenter --net="/run/netns/$ns_b" -- rsync -a "rsync://$ip_a:$PORT/src/$name/" "$WORK/dst-$name/" &
  RS=$!
  r_first=""
  while kill -0 $RS 2>/dev/null; do
    if [ -z "$r_first" ] && [ -f "$WORK/dst-$name/f1" ]; then r_first=$(now); fi
    sleep 0.05
  done
  wait $RS
  r_all=$(now)
  [ -n "$r_first" ] || r_first=$r_all
  cmp -s "$WORK/src/$name/$last" "$WORK/dst-$name/$last" || { echo "rsync copy differs" >&2; exit 1; }
  rows+=("$size $move_ms $(ms "$t0" "$t_first") $(ms "$t0" "$t_all") $(ms "$r0" "$r_first") $(ms "$r0" "$r_all")")
  echo "    ${rows[-1]}   (MiB, move ms, first read ms, all at B ms, rsync first file ms, rsync all ms)"
  rm -rf "$WORK/dst-$name" "$WORK/src/$name"
done

python3 - "$WANSHAPE" "$WORK/move-wan.json" "${rows[@]}" <<'EOF'
import json, sys
shape, out, rows = sys.argv[1], sys.argv[2], [r.split() for r in sys.argv[3:]]
res = []
print(f"\nmoving a subtree across a {shape} WAN, against rsync -a over the same link (ms)\n")
head = ["MiB", "move", "first read at B", "all at B", "rsync: first file", "rsync: all", "rsync all / first read at B"]
print(" | ".join(head))
print(" | ".join("---" for _ in head))
for size, move, first, full, rfirst, rall in rows:
    ratio = float(rall) / max(float(first), 1.0)
    print(f"{size} | {move} | {first} | {full} | {rfirst} | {rall} | {ratio:,.0f}x")
    res.append(dict(mib=int(size), move_ms=float(move or 0), first_read_ms=int(first),
                    all_present_ms=int(full), rsync_first_file_ms=int(rfirst),
                    rsync_all_ms=int(rall)))
json.dump(dict(wan=shape, runs=res), open(out, "w"), indent=1)
print(f"\n(written to {out})")
EOF
