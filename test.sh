#!/usr/bin/env bash
# The whole test suite: install what is missing, check formatting and lints, run every test.
set -euo pipefail
cd "$(dirname "$0")"
scripts/prereqs.sh
. scripts/env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
