#!/usr/bin/env bash
# The whole test suite: install what is missing, check formatting and lints, run every test,
# then a short fuzz pass over every decoder (15 s a target; scripts/fuzz.sh for longer).
set -euo pipefail
cd "$(dirname "$0")"
scripts/prereqs.sh
. scripts/env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
scripts/fuzz.sh 15
