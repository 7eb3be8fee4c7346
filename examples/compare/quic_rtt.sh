#!/usr/bin/env bash
# QUIC round trips, 64 B, in one run: Hypha (and optionally an earlier Hypha build), Zenoh's
# QUIC (z_ping style), and the bare-quinn floor (`quic_floor` of hypha-transports) in each of
# its runtime arrangements, interleaved round by round (the order rotates each round).
#
#   REPS=3 N=10000 examples/compare/quic_rtt.sh
#
# Builds nothing; give the binaries' directories:
#   HX         Hypha's examples (ping, pong) and quic_floor   (default: $ROOT/target/release/examples)
#   HX_BEFORE  an earlier build's ping and pong, measured as "before" (optional)
#   ZB         zbench                                         (default: $HERE/target/release/zbench)
# Prints one JSON line per measurement, then a table: p50 and p99 medians per system, and the
# per-round ratios of Hypha (and before) to Zenoh (min / median / max).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-3}
N=${N:-10000}
HX=${HX:-$ROOT/target/release/examples}
HX_BEFORE=${HX_BEFORE:-}
ZB=${ZB:-$HERE/target/release/zbench}
FLOORS=${FLOORS:-"ct mt-task mt inline"}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
. "$HERE/tls.sh"
TLS="$WORK/tls"; make_tls "$TLS"

OUT="$WORK/results.jsonl"
run_one() { # name rep
  local name=$1 rep=$2 p pid res
  p=$(port)
  case $name in
    hypha|before)
      local d=$HX; [ "$name" = before ] && d=$HX_BEFORE
      "$d/pong" --listen "quic/127.0.0.1:$p" >/dev/null 2>&1 & pid=$!
      res=$(timeout 120 "$d/ping" --connect "quic/127.0.0.1:$p" --listen quic/127.0.0.1:0 --n "$N" --size 64 2>/dev/null | tail -1 || true) ;;
    zenoh)
      ZBENCH_TLS_DIR="$TLS" "$ZB" pong --listen "quic/localhost:$p" >/dev/null 2>&1 & pid=$!
      res=$(ZBENCH_TLS_DIR="$TLS" timeout 120 "$ZB" ping --connect "quic/localhost:$p" --listen quic/127.0.0.1:0 --n "$N" --size 64 2>/dev/null | tail -1 || true) ;;
    floor-*)
      local rt=${name#floor-}
      "$HX/quic_floor" pong --listen "127.0.0.1:$p" --cert "$WORK/floor.der" --rt "$rt" --secs 120 >/dev/null 2>&1 & pid=$!
      res=$(timeout 120 "$HX/quic_floor" ping --connect "127.0.0.1:$p" --cert "$WORK/floor.der" --rt "$rt" --n "$N" 2>/dev/null | tail -1 || true)
      rm -f "$WORK/floor.der" ;;
  esac
  PIDS+=("$pid")
  stop "$pid"
  if [ -n "$res" ]; then
    printf '{"system":"%s","rep":%d,"result":%s}\n' "$name" "$rep" "$res" | tee -a "$OUT"
  else
    echo "  ($name round $rep: no result)" >&2
  fi
}

systems="hypha zenoh"
[ -n "$HX_BEFORE" ] && systems="$systems before"
for f in $FLOORS; do systems="$systems floor-$f"; done
read -r -a all <<< "$systems"
for rep in $(seq 1 "$REPS"); do
  k=$(( (rep - 1) % ${#all[@]} ))
  order=("${all[@]:k}" "${all[@]:0:k}")
  echo "== round $rep/$REPS: ${order[*]}" >&2
  for s in "${order[@]}"; do run_one "$s" "$rep"; done
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["system"], {})[r["rep"]] = r["result"]
def med(sys_, k):
    v = [x[k] for x in by.get(sys_, {}).values()]
    return statistics.median(v) if v else float("nan")
print("| system | p50 µs (median) | p99 µs (median) | p50 per round |")
print("| --- | ---: | ---: | --- |")
for s in by:
    rounds = ", ".join(f'{by[s][r]["p50_us"]:.1f}' for r in sorted(by[s]))
    print(f"| {s} | {med(s, 'p50_us'):.1f} | {med(s, 'p99_us'):.1f} | {rounds} |")
for s in [x for x in by if x != "zenoh"]:
    for k in ("p50_us", "p99_us"):
        rs = [by[s][r][k] / by["zenoh"][r][k] for r in by[s] if r in by.get("zenoh", {})]
        if rs:
            print(f"{s}/zenoh {k}: min {min(rs):.2f} median {statistics.median(rs):.2f} max {max(rs):.2f} ({len(rs)} rounds)")
EOF
