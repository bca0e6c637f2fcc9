# Sourced by the scripts: one target dir for everything, sccache when available (it also
# caches RocksDB's C++, the slowest part of a cold build).
if command -v sccache >/dev/null 2>&1 && [ -z "${RUSTC_WRAPPER:-}" ]; then
  export RUSTC_WRAPPER=sccache
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
