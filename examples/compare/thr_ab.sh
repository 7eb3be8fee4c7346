#!/usr/bin/env bash
# Throughput A/B: Hypha now against Hypha at an earlier commit (BEFORE=its examples directory),
# and Zenoh 1.10.2, interleaved per round: each SIZES payload (thr_pub -> thr_sub over TCP,
# SECS each), then a FANOUT-subscriber fan-out of 64 B samples.
#
#   BEFORE=/path/to/target/release/examples examples/compare/thr_ab.sh
#
# ROUNDS (default 3), SECS (4), SIZES ("8 65536 1048576"), FANOUT (8). Prints one JSON line per
# measurement and, per workload, each system's rounds and median, and now/before, now/Zenoh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-4}
SIZES=${SIZES:-8 65536 1048576}
FANOUT=${FANOUT:-8}
BEFORE=${BEFORE:?set BEFORE to the earlier build examples directory}
# shellcheck source=common.sh
. "$HERE/common.sh"
OUT="$WORK/results.jsonl"
bin() { # system role
  case "$1" in
    now) echo "$HX/$2" ;;
    before) echo "$BEFORE/$2" ;;
    zenoh) echo "$ZB $2" ;;
  esac
}
record() { # system workload round json
  [ -n "$4" ] || { echo "  ($1 $2: no result)" >&2; return; }
  printf '{"system":"%s","workload":"%s","round":%d,"result":%s}\n' "$1" "$2" "$3" "$4" | tee -a "$OUT"
}
thr() { # system size round
  local ep spid ppid
  ep="tcp/127.0.0.1:$(port)"
  $(bin "$1" thr_sub) --listen "$ep" --secs "$SECS" > "$WORK/sub.out" 2>/dev/null & spid=$!; PIDS+=("$spid")
  sleep 0.3
  $(bin "$1" thr_pub) --connect "$ep" --listen tcp/127.0.0.1:0 --size "$2" >/dev/null 2>&1 & ppid=$!; PIDS+=("$ppid")
  timeout $((SECS + 60)) tail --pid="$spid" -f /dev/null || true
  stop "$ppid"; stop "$spid"
  record "$1" "thr$2" "$3" "$(grep msgs_per_s "$WORK/sub.out" | tail -1 || true)"
}
fanout() { # system round
  local ep ppid pids=() p
  ep="tcp/127.0.0.1:$(port)"
  $(bin "$1" thr_pub) --listen "$ep" --size 64 >/dev/null 2>&1 & ppid=$!; PIDS+=("$ppid")
  sleep 0.3
  for _ in $(seq 1 "$FANOUT"); do
    $(bin "$1" thr_sub) --connect "$ep" --listen tcp/127.0.0.1:0 --secs "$SECS" >> "$WORK/fan.out" 2>/dev/null & pids+=($!); PIDS+=($!)
  done
  for p in "${pids[@]}"; do timeout $((SECS + 90)) tail --pid="$p" -f /dev/null || true; done
  stop "$ppid"
  record "$1" fanout "$2" "$(grep msgs_per_s "$WORK/fan.out" | python3 -c 'import sys,json; v=sorted(json.loads(l)["msgs_per_s"] for l in sys.stdin); print(json.dumps({"msgs_per_s":v[len(v)//2],"min":v[0],"subs":len(v)}) if v else "")')"
  rm -f "$WORK/fan.out"
}
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which build goes first.
  if [ $((r % 2)) = 1 ]; then order="before now zenoh"; else order="now before zenoh"; fi
  for s in $SIZES; do for sys in $order; do thr "$sys" "$s" "$r"; done; done
  for sys in $order; do fanout "$sys" "$r"; done
done
python3 - "$OUT" <<'PY'
import json, statistics as st, sys
from collections import defaultdict
v = defaultdict(list)
for l in open(sys.argv[1]):
    j = json.loads(l)
    v[(j["workload"], j["system"])].append(j["result"]["msgs_per_s"])
for w in dict.fromkeys(k[0] for k in v):
    med = {s: st.median(v[(w, s)]) for s in ("before", "now", "zenoh") if v.get((w, s))}
    rounds = "; ".join(f"{s} " + ", ".join(f"{x:,.0f}" for x in v[(w, s)]) for s in med)
    ratio = lambda a, b: f"{med[a] / med[b]:.2f}" if a in med and b in med and med[b] else "n/a"
    print(f"{w}: median msgs/s " + ", ".join(f"{s} {m:,.0f}" for s, m in med.items())
          + f"; now/before {ratio('now', 'before')}, now/Zenoh {ratio('now', 'zenoh')} ({rounds})")
PY
