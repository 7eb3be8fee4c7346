#!/usr/bin/env bash
# The cost of session acknowledgements (issue 16): 8-byte throughput between two processes
# (thr_pub -> thr_sub over TCP on loopback) with acknowledgements off in both (HYPHA_ACKS=off)
# and on (the default), interleaved round by round, the order alternated, the same build.
#
#   examples/compare/acks_cost.sh        # REPS rounds (default 5) of SECS seconds (default 4)
#   MODE=ping examples/compare/acks_cost.sh   # 64 B round trips instead (ping -> pong, N each)
#
# Prints one JSON line per run and a summary: medians and the per-round ratio on/off.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-5}
SECS=${SECS:-4}
MODE=${MODE:-thr}
N=${N:-20000}
cargo build --release -q -p hypha-examples --example thr_pub --example thr_sub --example ping --example pong --manifest-path "$ROOT/Cargo.toml"
HX="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

OUT="$WORK/results.jsonl"
ping_run() { # variant(on|off) round
  local p pid res
  p=$(port)
  HYPHA_ACKS=$1 "$HX/pong" --listen "tcp/127.0.0.1:$p" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  sleep 0.3
  res=$(HYPHA_ACKS=$1 timeout 300 "$HX/ping" --connect "tcp/127.0.0.1:$p" --listen tcp/127.0.0.1:0 \
    --n "$N" --warmup 1000 --size 64 2>/dev/null | tail -1 || true)
  stop "$pid"
  [ -n "$res" ] || { echo "  ($1 round $2: no result)" >&2; return; }
  printf '{"acks":"%s","round":%d,"result":%s}\n' "$1" "$2" "$res" | tee -a "$OUT"
}
run() { # variant(on|off) round
  if [ "$MODE" = ping ]; then ping_run "$@"; return; fi
  local ep spid ppid res acks=on
  [ "$1" = off ] && acks=off
  ep="tcp/127.0.0.1:$(port)"
  HYPHA_ACKS=$acks "$HX/thr_sub" --listen "$ep" --secs "$SECS" > "$WORK/sub.out" 2>"$WORK/sub.err" & spid=$!; PIDS+=("$spid")
  sleep 0.3
  HYPHA_ACKS=$acks "$HX/thr_pub" --connect "$ep" --listen tcp/127.0.0.1:0 --size 8 >/dev/null 2>"$WORK/pub.err" & ppid=$!; PIDS+=("$ppid")
  timeout $((SECS + 60)) tail --pid="$spid" -f /dev/null || true
  stop "$ppid"; stop "$spid"
  res=$(grep msgs_per_s "$WORK/sub.out" | tail -1 || true)
  [ -n "$res" ] || { echo "  ($1 round $2: no result)" >&2; cat "$WORK/sub.err" >&2; return; }
  printf '{"acks":"%s","round":%d,"result":%s}\n' "$1" "$2" "$res" | tee -a "$OUT"
}
for r in $(seq 1 "$REPS"); do
  echo "== round $r/$REPS" >&2
  if [ $((r % 2)) -eq 1 ]; then run off "$r"; run on "$r"; else run on "$r"; run off "$r"; fi
done
python3 - "$OUT" "$MODE" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
if sys.argv[2] == "ping":
    for v in ["off", "on"]:
        r = [x["result"] for x in rows if x["acks"] == v]
        print(f"  ping 64 B acks {v:3}: p50 {st.median(x['p50_us'] for x in r):7.1f} us  "
              f"p99 {st.median(x['p99_us'] for x in r):8.1f} us (medians of {len(r)} runs)")
    sys.exit(0)
by = {}
for r in rows:
    by.setdefault(r["acks"], {})[r["round"]] = r["result"]["msgs_per_s"]
for v in ["off", "on"]:
    print(f"  thr 8 B acks {v:3}: {st.median(by[v].values()):12,.0f} msgs/s (median of {len(by[v])})")
ratios = [by["on"][k] / by["off"][k] for k in by["on"] if k in by["off"]]
print(f"  on/off per round: min {min(ratios):.3f} median {st.median(ratios):.3f} max {max(ratios):.3f}")
PY
