#!/usr/bin/env bash
# The main job: install what is missing, build, start a local cluster of real processes
# under .mobilus-dev/ (3 metadata members; sites site-a and site-b, each with a data node
# and a FUSE mount at .mobilus-dev/mnt/<site>), show it, and run the narrated demo.
# Needs root (FUSE mounts). Stop it with: target/debug/mobilusctl dev down --dir .mobilus-dev
set -euo pipefail
cd "$(dirname "$0")"
scripts/prereqs.sh
. scripts/env.sh
echo "==> building (the first build compiles RocksDB: about 12 minutes on 2 cores)"
cargo build --workspace --bins
ctl=target/debug/mobilusctl
$ctl dev up --dir .mobilus-dev
echo
echo "==> the cluster, as the leader sees it"
$ctl --config .mobilus-dev/cluster.toml cluster status
echo
echo "==> the story so far (mobilusctl dev demo)"
$ctl dev demo --dir .mobilus-dev
