#!/usr/bin/env bash
# Hypha vs Zenoh, side by side, on this machine, in one run.
#
#   examples/compare/run.sh            # REPS=3 SECS=5 N=10000 by default
#
# Builds Hypha's bench examples (main workspace) and this project (Zenoh 1.10.2 + a raw TCP
# baseline), then runs every workload REPS times, alternating which system goes first, both in
# peer mode with explicit loopback endpoints (Zenoh: multicast scouting off), publisher and
# subscriber in separate processes. Writes results.jsonl here, then BENCHMARKS.md and
# benchmarks.png at the repository root (report.py).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-3}
SECS=${SECS:-5}
N=${N:-10000}
FANOUT=${FANOUT:-8}

echo "== building" >&2
# shellcheck source=common.sh
. "$HERE/common.sh"


OUT="$HERE/results.jsonl"
: > "$OUT"
rep=0
record() { # system workload param json
  [ -n "$4" ] || { echo "  ($1 $2 $3: no result)" >&2; return; }
  printf '{"system":"%s","workload":"%s","param":"%s","rep":%d,"result":%s}\n' "$1" "$2" "$3" "$rep" "$4" >> "$OUT"
  echo "  $1 $2 $3: $4" >&2
}
bin() { # system role -> command prefix
  if [ "$1" = hypha ]; then echo "$HX/$2"; else echo "$ZB $2"; fi
}

ping_run() { # system proto
  local sys=$1 proto=$2 ep res pid
  ep="$proto/127.0.0.1:$(port)"
  if [ "$sys" = zenoh ] && [ "$proto" = quic ]; then export ZBENCH_TLS_DIR="$TLS"; ep="quic/localhost:${ep##*:}"; fi
  $(bin "$sys" pong) --listen "$ep" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  res=$(timeout 120 $(bin "$sys" ping) --connect "$ep" --listen "$proto/127.0.0.1:0" --n "$N" --size 64 2>/dev/null | tail -1 || true)
  [ "$proto" = quic ] && [ "$sys" = zenoh ] && { res=${res}; }
  unset ZBENCH_TLS_DIR
  stop "$pid"
  record "$sys" "rtt_$proto" 64 "$res"
}

thr_run() { # system size
  local sys=$1 size=$2 ep res spid ppid
  ep="tcp/127.0.0.1:$(port)"
  $(bin "$sys" thr_sub) --listen "$ep" --secs "$SECS" > "$WORK/sub.out" 2>/dev/null & spid=$!; PIDS+=("$spid")
  sleep 0.3
  $(bin "$sys" thr_pub) --connect "$ep" --listen tcp/127.0.0.1:0 --size "$size" >/dev/null 2>&1 & ppid=$!; PIDS+=("$ppid")
  timeout $((SECS + 60)) tail --pid="$spid" -f /dev/null || true
  stop "$ppid"; stop "$spid"
  res=$(grep msgs_per_s "$WORK/sub.out" | tail -1 || true)
  record "$sys" thr "$size" "$res"
}

fanout_run() { # system
  local sys=$1 ep ppid pids=() i all
  ep="tcp/127.0.0.1:$(port)"
  # The publisher listens first: a subscriber's own `--listen :0` could otherwise be given the
  # port picked for the publisher (free when picked), and then the publisher cannot bind it.
  $(bin "$sys" thr_pub) --listen "$ep" --size 64 >/dev/null 2>&1 & ppid=$!; PIDS+=("$ppid")
  sleep 0.3
  for i in $(seq 1 "$FANOUT"); do
    $(bin "$sys" thr_sub) --connect "$ep" --listen tcp/127.0.0.1:0 --secs "$SECS" > "$WORK/fan$i.out" 2>/dev/null & pids+=($!); PIDS+=($!)
  done
  for p in "${pids[@]}"; do timeout $((SECS + 90)) tail --pid="$p" -f /dev/null || true; done
  stop "$ppid"
  all=$(cat "$WORK"/fan*.out | grep msgs_per_s | python3 -c 'import sys,json; v=sorted(json.loads(l)["msgs_per_s"] for l in sys.stdin); print(json.dumps({"per_sub_median":v[len(v)//2] if v else 0,"per_sub_min":v[0] if v else 0,"subs":len(v)}))')
  rm -f "$WORK"/fan*.out
  record "$sys" fanout 64 "$all"
}

idle_run() { # system
  local sys=$1 res
  res=$(timeout 60 $(bin "$sys" idle) --listen "tcp/127.0.0.1:$(port)" --secs 2 2>/dev/null | tail -1 || true)
  record "$sys" idle 0 "$res"
}

for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then order="hypha zenoh"; else order="zenoh hypha"; fi
  echo "== round $rep/$REPS ($order first)" >&2
  record raw rtt_tcp 64 "$(timeout 60 "$RAW" ping --n "$N" --size 64)"
  for s in 8 64 1024 65536 1048576; do
    record raw thr "$s" "$(timeout 60 "$RAW" stream --size "$s" --secs "$SECS")"
  done
  for sys in $order; do
    ping_run "$sys" tcp
    ping_run "$sys" quic
    for s in 8 64 1024 65536 1048576; do thr_run "$sys" "$s"; done
    fanout_run "$sys"
    idle_run "$sys"
  done
done

python3 "$HERE/report.py" "$OUT" "$ROOT/BENCHMARKS.md" "$ROOT/benchmarks.png"
