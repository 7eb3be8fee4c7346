# Shared by the comparison scripts (sourced): builds Hypha's bench examples and this project,
# sets HX (Hypha examples), ZB (zbench), RAW (rawtcp), a work directory removed on exit, PIDS
# (killed on exit), and the helpers port and stop.
# shellcheck shell=bash
cargo build --release -q -p hypha-examples --examples --manifest-path "$ROOT/Cargo.toml"
(cd "$HERE" && cargo build --release -q)
HX="$ROOT/target/release/examples"
ZB="$HERE/target/release/zbench"
RAW="$HERE/target/release/rawtcp"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# TLS material for Zenoh's QUIC (Hypha generates its own self-signed certificate).
. "$HERE/tls.sh"
TLS="$WORK/tls"; make_tls "$TLS"
