#!/usr/bin/env bash
# Syscalls and context switches per round trip (64 B), Hypha vs Zenoh (z_ping style) vs
# raw TCP, from kernel tracepoints (`perf stat`, needs root or perf_event_paranoid <= 1).
#
#   examples/compare/syscalls.sh          # N=10000 round trips after 1000 of warm-up
#   PROTO=quic examples/compare/syscalls.sh
#   HX=/other/build/target/release/examples examples/compare/syscalls.sh   # another Hypha build
#
# Counts are per process over its whole life (start-up included, a few hundred syscalls, so
# a fraction of one per round trip), divided by the round trips it made.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=${N:-10000}
WARM=1000
cargo build --release -q -p hypha-examples --example ping --example pong --manifest-path "$ROOT/Cargo.toml"
(cd "$HERE" && cargo build --release -q)
HX=${HX:-"$ROOT/target/release/examples"}
PROTO=${PROTO:-tcp}
ZB="$HERE/target/release/zbench"
RAW="$HERE/target/release/rawtcp"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
EV=context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
per_rt() { # stat-file -> "ev=count/rt ..."
  python3 - "$1" "$((N + WARM))" <<'EOF'
import sys
n = int(sys.argv[2])
out = []
for line in open(sys.argv[1]):
    parts = line.strip().split(",")
    if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
        continue
    name = parts[2].replace("syscalls:sys_enter_", "")
    out.append(f"{name}={float(parts[0]) / n:.2f}")
print(" ".join(out))
EOF
}
run() { # name pong-cmd ping-cmd (with EP placeholder)
  local name=$1 ep pid
  ep="$PROTO/127.0.0.1:$(port)"
  # Zenoh's QUIC needs a certificate for the name it dials.
  if [ "${name%-chain}" = zenoh ] && [ "$PROTO" = quic ]; then ep="quic/localhost:${ep##*:}"; fi
  perf stat -x, -e "$EV" -o "$WORK/pong.stat" -- ${2//EP/$ep} >/dev/null 2>&1 & pid=$!
  sleep 0.5
  perf stat -x, -e "$EV" -o "$WORK/ping.stat" -- ${3//EP/$ep} >/dev/null 2>&1 || true
  wait "$pid" || true
  echo "$name ping: $(per_rt "$WORK/ping.stat")"
  echo "$name pong: $(per_rt "$WORK/pong.stat")"
}
SECS=$((N / 5000 + 8))
if [ "$PROTO" = quic ]; then
  # TLS material for Zenoh's QUIC (Hypha generates its own self-signed certificate).
  . "$HERE/tls.sh"
  TLS="$WORK/tls"; make_tls "$TLS"
  export ZBENCH_TLS_DIR="$TLS"
fi
run hypha "$HX/pong --listen EP --secs $SECS" "$HX/ping --connect EP --listen $PROTO/127.0.0.1:0 --n $N --size 64"
run zenoh "$ZB pong --listen EP --secs $SECS" "$ZB ping --connect EP --listen $PROTO/127.0.0.1:0 --n $N --size 64"
# The callback chains (`ping --chain`: each echo's callback sends the next ping).
run hypha-chain "$HX/pong --listen EP --secs $SECS" "$HX/ping --connect EP --listen $PROTO/127.0.0.1:0 --n $N --size 64 --chain"
run zenoh-chain "$ZB pong --listen EP --secs $SECS" "$ZB ping --connect EP --listen $PROTO/127.0.0.1:0 --n $N --size 64 --chain"
perf stat -x, -e "$EV" -o "$WORK/raw.stat" -- "$RAW" ping --n "$N" --size 64 >/dev/null
echo "raw (ping+echo threads, one process): $(per_rt "$WORK/raw.stat")"
