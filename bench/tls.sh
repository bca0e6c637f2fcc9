# Mutual TLS for the benchmark scripts, as in production: a CA for the run and a
# certificate per process. Source it, then:
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
