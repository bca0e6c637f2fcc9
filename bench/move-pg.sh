#!/usr/bin/env bash
# A PostgreSQL server moved across a WAN: a dev cluster behind an emulated link (default
# 50 ms round trip, 100 Mbit/s; `mobilusctl dev up --wan`) runs the demo's PostgreSQL step
# alone (`mobilusctl dev demo --postgres-only`): initdb and `pgbench -i -s SCALE` at
# site-a, pgbench (TPC-B-like, 4 clients) there, then the server stops, /pg moves to
# site-b, and the server starts there at once. Reports the move's time, the server's start
# and first query at site-b, pgbench's transactions per second in the first FIRST seconds
# at site-b (while its data follows) against its steady state once the data has followed,
# and site-a's before the move. Needs root. Usage:
#   bench/move-pg.sh                          (scale 10, 60 s first, 30 s steady)
#   SCALE=4 FIRST=20 STEADY=10 WAN=50ms,100mbit bench/move-pg.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WANSHAPE=${WAN:-50ms,100mbit}
WORK=${MOBILUS_BENCH_DIR:-/var/tmp/mobilus-move-pg}

scripts/prereqs.sh
. scripts/env.sh
BIN=${MOBILUS_BIN:-target/release}
if [ -z "${MOBILUS_BIN:-}" ]; then
  echo "==> building (release)"
  cargo build --release --workspace --bins -q
fi
ctl="$BIN/mobilusctl"
DEV="$WORK/dev"
"$ctl" dev down --dir "$DEV" >/dev/null 2>&1 || true
rm -rf "$WORK"
mkdir -p "$WORK"
trap '"$ctl" dev down --dir "$DEV" >/dev/null 2>&1 || true' EXIT

echo "==> a dev cluster behind a $WANSHAPE WAN"
"$ctl" dev up --dir "$DEV" --wan "$WANSHAPE" >/dev/null
"$ctl" dev demo --dir "$DEV" --postgres-only --pg-scale "${SCALE:-10}" \
  --pg-first-secs "${FIRST:-60}" --pg-steady-secs "${STEADY:-30}"
