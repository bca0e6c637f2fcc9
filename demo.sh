#!/usr/bin/env bash
# The main job: install what is missing, build, start a local cluster of real processes
# under .mobilus-dev/ (3 metadata members; sites site-a and site-b, each with a data node
# and a FUSE mount at .mobilus-dev/mnt/<site>, with an emulated 50 ms, 100 Mbit/s WAN
# between the sites), show it, and run the narrated demo.
# Needs root (FUSE mounts). Stop it with: target/debug/mobilusctl dev down --dir .mobilus-dev
set -euo pipefail
cd "$(dirname "$0")"
scripts/prereqs.sh
. scripts/env.sh
echo "==> building (the first build compiles RocksDB: about 12 minutes on 2 cores)"
cargo build --workspace --bins
ctl=target/debug/mobilusctl
# The WAN is chosen when the cluster is made: a cluster an older demo made without it
# keeps running as it is (remove .mobilus-dev after `dev down` to get the WAN).
if [ -f .mobilus-dev/cluster.toml ] && ! grep -q '^\[wan\]' .mobilus-dev/cluster.toml; then
  echo "note: .mobilus-dev was made without the emulated WAN; the demo runs without it"
  $ctl dev up --dir .mobilus-dev
else
  $ctl dev up --dir .mobilus-dev --wan 50ms,100mbit
fi
echo
echo "==> the cluster, as the leader sees it"
$ctl --config .mobilus-dev/cluster.toml cluster status
echo
echo "==> the story so far (mobilusctl dev demo)"
$ctl dev demo --dir .mobilus-dev
