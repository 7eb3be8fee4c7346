#!/usr/bin/env bash
# Head-of-line blocking: 64 B RealTime round trips (ping -> pong) without bulk, with 1 MiB
# Background bulk published by the ping on the same link, and with the same bulk from a second
# session (its own link: the machine's CPU contention alone, the floor a same-link figure can
# reach), REPS rounds interleaved, per transport (PROTOS, default "tcp quic").
# X=DIR runs the ping/pong binaries in DIR (e.g. an older build, for an A/B in the same run).
# RATES="50 200" paces the bulk to each of these MiB/s in turn (`ping --bulk-rate`; 0, the
# default, is as fast as the link takes it): a paced bulk leaves the CPU to the pings, so the
# link's own queueing is what is measured.
#
# ZB=PATH/zbench runs Zenoh in the same rounds, in its own best style (z_ping/z_pong: blocking
# recv, callback pong, RealTime express pings), with the same bulk (`zbench ping --bulk`:
# Background, Block, paced the same way, from the same session or a second one).
#
# RAW=PATH/rawtcp adds, per rate, the control with no library in the load: the same pings with
# no bulk of their own while `rawtcp blast` (another process, raw loopback TCP, 1 MiB writes at
# the rate) runs beside them, and the raw TCP ping-pong without and beside the same blast. What
# that blast costs the pings is the machine's CPU contention, which no fragmenting can remove.
#
# BEFORE=DIR adds an A/B in the same run: each round runs the Hypha rows with the binaries in DIR
# first (tagged "build":"before"), then with X (tagged "build":"now"), then Zenoh's.
#
#   examples/compare/hol.sh          # REPS (default 3), N round trips (default 3000), BULK bytes
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-3}
N=${N:-3000}
BULK=${BULK:-1048576}
PROTOS=${PROTOS:-tcp quic}
RATES=${RATES:-0}
[ -n "${NOBUILD:-}" ] || cargo build --release -q -p hypha-examples --example ping --example pong --manifest-path "$ROOT/Cargo.toml"
X=${X:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples"}
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -z "${ZTLS:-}" ] || rm -rf "$ZTLS"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { # proto bulk round [extra ping args]
  local p pid res
  p=$(port)
  "$X/pong" --listen "$1/127.0.0.1:$p" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  sleep 0.3
  res=$(timeout 300 "$X/ping" --connect "$1/127.0.0.1:$p" --listen "$1/127.0.0.1:0" --n "$N" --warmup 300 \
    --size 64 --bulk "$2" "${@:4}" 2>/dev/null | tail -1 || true)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  [ -n "$res" ] && printf '{%s"proto":"%s","round":%d,"result":%s}\n' "$TAG" "$1" "$3" "$res"
}
if [ -n "${ZB:-}" ]; then
  # Zenoh's QUIC needs TLS material (Hypha makes its own): a throw-away CA and certificate
  # for localhost, which its endpoints must then name.
  . "$HERE/tls.sh"
  ZTLS=$(mktemp -d); make_tls "$ZTLS"
fi
zrun() { # proto bulk round [extra ping args]
  local p pid res host=127.0.0.1
  p=$(port)
  if [ "$1" = quic ]; then export ZBENCH_TLS_DIR="$ZTLS"; host=localhost; fi
  "$ZB" pong --listen "$1/$host:$p" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  sleep 0.5
  res=$(timeout 300 "$ZB" ping --connect "$1/$host:$p" --n "$N" --warmup 300 \
    --size 64 --bulk "$2" "${@:4}" 2>/dev/null | tail -1 || true)
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  unset ZBENCH_TLS_DIR
  [ -n "$res" ] && printf '{"system":"zenoh","proto":"%s","round":%d,"result":%s}\n' "$1" "$3" "$res"
}
blast() { # rate: starts `rawtcp blast` in the background for longer than one run takes
  "$RAW" blast --size "$BULK" --rate "$1" --secs 120 >/dev/null 2>&1 & BLAST=$!; PIDS+=("$BLAST")
  sleep 0.3
}
unblast() { kill "$BLAST" 2>/dev/null || true; wait "$BLAST" 2>/dev/null || true; }
rawctl() { # proto round: the raw ping-pong alone (blast_rate null), then beside each blast
  local res rate
  [ "$1" = tcp ] || return 0
  for rate in null $RATES; do
    [ "$rate" = null ] || blast "$rate"
    res=$(timeout 120 "$RAW" ping --n "$N" --size 64 2>/dev/null | tail -1 || true)
    [ -n "$res" ] && printf '{"system":"raw","proto":"tcp","round":%d,"blast_rate":%s,"result":%s}\n' "$2" "$rate" "$res"
    [ "$rate" = null ] || unblast
  done
}
NOW=$X
TAG=""
for r in $(seq 1 "$REPS"); do
  for proto in $PROTOS; do
    for build in ${BEFORE:+before} now; do
      if [ -n "${BEFORE:-}" ]; then
        if [ "$build" = before ]; then X=$BEFORE; else X=$NOW; fi
        TAG="\"build\":\"$build\","
      fi
      run "$proto" 0 "$r"
      for rate in $RATES; do
        run "$proto" "$BULK" "$r" --bulk-rate "$rate"
        run "$proto" "$BULK" "$r" --bulk-rate "$rate" --bulk-separate
        if [ -n "${RAW:-}" ]; then
          blast "$rate"
          run "$proto" 0 "$r" | sed "s/^{/{\"blast_rate\":$rate,/"
          unblast
        fi
      done
    done
    X=$NOW
    [ -z "${RAW:-}" ] || rawctl "$proto" "$r"
    if [ -n "${ZB:-}" ]; then
      zrun "$proto" 0 "$r"
      for rate in $RATES; do
        zrun "$proto" "$BULK" "$r" --bulk-rate "$rate"
        zrun "$proto" "$BULK" "$r" --bulk-rate "$rate" --bulk-separate
      done
    fi
  done
done
