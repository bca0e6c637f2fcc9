#!/usr/bin/env bash
# Fuzz every decoder of outside bytes (the targets of fuzz/, `mobilus_fuzz::TARGETS`)
# with libFuzzer, through cargo fuzz on the nightly toolchain.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    each target for SECONDS (default 60)
#
# The test command runs `scripts/fuzz.sh 15`; a longer pass is `scripts/fuzz.sh 1800`.
# The corpus grows in target/fuzz/corpus/TARGET across runs; the seeds (regenerated
# each run) and fuzz/regressions/TARGET are read too. A crash stops the script: its
# input is in target/fuzz/artifacts/TARGET/; copy it into fuzz/regressions/TARGET/ (the
# tests replay it), fix the cause, run again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

seconds=${1:-60}
shift || true
fuzz_dir=fuzz/libfuzzer
work=target/fuzz

rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz --version 0.13.2

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")

# -s none: Mobilus has no unsafe code; what fuzzing looks for is panics, overflows (-a),
# unbounded allocation (-rss_limit_mb, -malloc_limit_mb) and hangs (-timeout), not
# memory errors, and without ASan it runs about twice as fast.
flags=(-O -a -s none --fuzz-dir "$fuzz_dir" --target-dir "$work/build")
echo "==> building ${#targets[@]} fuzz targets (nightly, libFuzzer)"
cargo +nightly fuzz build "${flags[@]}"
cargo run --quiet -p mobilus-fuzz --bin fuzz-seeds -- "$work/seeds"

printf '%-18s %8s %12s %8s\n' target seconds executions corpus > "$work/summary.txt"
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  mkdir -p "$corpus" "$artifacts" "fuzz/regressions/$t"
  log="$work/$t.log"
  echo "==> fuzzing $t for ${seconds}s"
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$corpus" "$work/seeds/$t" "fuzz/regressions/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t FAILED: its input is in $artifacts/ (log: $log)" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  printf '%-18s %8s %12s %8s\n' "$t" "$seconds" "${execs:-?}" "$(ls "$corpus" | wc -l)" >> "$work/summary.txt"
done
cat "$work/summary.txt"
