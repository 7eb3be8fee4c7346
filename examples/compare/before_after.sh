#!/usr/bin/env bash
# Round trip and 8-byte throughput: Hypha now, Hypha at an earlier commit, Zenoh 1.10.2 in its
# own best style (z_ping-like blocking recv, pong answering from its callback), and the raw
# two-process TCP ping-pong floor and a bare tokio echo (`rawtcp tokio_ping`), interleaved in
# one run.
#
#   BEFORE=/path/to/target/release/examples examples/compare/before_after.sh
#
# Build the earlier commit's examples first, e.g.:
#   git worktree add /tmp/hypha-before <commit>
#   (cd /tmp/hypha-before && CARGO_TARGET_DIR=/tmp/target-before cargo build --release \
#      -p hypha-examples --example ping --example pong --example thr_pub --example thr_sub)
# REPS rounds (default 5), N round trips per ping run (default 10000), SECS per throughput run.
# Round trips run in two styles for Hypha now and for Zenoh: the loop in main (blocking recv
# for Zenoh, a stream subscriber for Hypha) and, as `after-chain` / `zenoh-chain`, a callback
# chain (`ping --chain`: each echo's callback sends the next ping); "best" is, per round, the
# lower p50 of a system's two styles. CHAIN=0 skips the chains (and an earlier build has none).
# Prints one JSON line per measurement on stdout and a summary (medians, ratio ranges).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-5}
N=${N:-10000}
SECS=${SECS:-4}
BEFORE=${BEFORE:-}
CHAIN=${CHAIN:-1}

# shellcheck source=common.sh
. "$HERE/common.sh"
AFTER="$HX"
OUT="$WORK/results.jsonl"
: > "$OUT"
record() { # system workload round json
  [ -n "$4" ] || { echo "  ($1 $2: no result)" >&2; return; }
  printf '{"system":"%s","workload":"%s","round":%d,"result":%s}\n' "$1" "$2" "$3" "$4" | tee -a "$OUT"
}
bin() { # system role
  case "$1" in
    after) echo "$AFTER/$2" ;;
    before) echo "$BEFORE/$2" ;;
    zenoh) echo "$ZB $2" ;;
  esac
}
ping_run() { # system[-chain] round [proto]
  local ep pid res proto=${3:-tcp} sys=${1%-chain} style=()
  [ "$sys" != "$1" ] && style=(--chain)
  ep="$proto/127.0.0.1:$(port)"
  if [ "$sys" = zenoh ] && [ "$proto" = quic ]; then export ZBENCH_TLS_DIR="$TLS"; ep="quic/localhost:${ep##*:}"; fi
  $(bin "$sys" pong) --listen "$ep" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  res=$(timeout 120 $(bin "$sys" ping) --connect "$ep" --listen "$proto/127.0.0.1:0" --n "$N" --size 64 "${style[@]}" 2>/dev/null | tail -1 || true)
  unset ZBENCH_TLS_DIR
  stop "$pid"
  record "$1" "rtt_${proto}_64" "$2" "$res"
}
thr_run() { # system round
  local ep spid ppid res
  ep="tcp/127.0.0.1:$(port)"
  $(bin "$1" thr_sub) --listen "$ep" --secs "$SECS" > "$WORK/sub.out" 2>/dev/null & spid=$!; PIDS+=("$spid")
  sleep 0.3
  $(bin "$1" thr_pub) --connect "$ep" --listen tcp/127.0.0.1:0 --size 8 >/dev/null 2>&1 & ppid=$!; PIDS+=("$ppid")
  timeout $((SECS + 60)) tail --pid="$spid" -f /dev/null || true
  stop "$ppid"; stop "$spid"
  res=$(grep msgs_per_s "$WORK/sub.out" | tail -1 || true)
  record "$1" thr_8 "$2" "$res"
}
systems="after zenoh"
[ -n "$BEFORE" ] && systems="after before zenoh"
for r in $(seq 1 "$REPS"); do
  echo "== round $r/$REPS" >&2
  record raw rtt_tcp_64 "$r" "$(timeout 60 "$RAW" ping --n "$N" --size 64)"
  record tokio rtt_tcp_64 "$r" "$(timeout 60 "$RAW" tokio_ping --n "$N" --size 64)"
  # Rotate the order every round so no system always runs first.
  set -- $systems
  for i in $(seq 1 $((r % $#))); do set -- "${@:2}" "$1"; done
  chains=()
  [ "$CHAIN" = 1 ] && chains=(after-chain zenoh-chain)
  for s in "$@" "${chains[@]}"; do ping_run "$s" "$r"; done
  for s in "$@" "${chains[@]}"; do ping_run "$s" "$r" quic; done
  for s in "$@"; do thr_run "$s" "$r"; done
done
python3 - "$OUT" <<'EOF'
import json, sys, statistics as st, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for r in rows:
    by[(r["workload"], r["system"])][r["round"]] = r["result"]
def med(w, s, f):
    v = [x[f] for x in by[(w, s)].values() if f in x]
    return st.median(v) if v else float("nan")
def ratios(w, a, b, f):
    v = [by[(w, a)][k][f] / by[(w, b)][k][f] for k in by[(w, a)] if k in by[(w, b)] and by[(w, b)][k].get(f)]
    return (min(v), st.median(v), max(v)) if v else (float("nan"),) * 3
# Per round, each system's best style (the lower p50; its p99 with it).
for w in ["rtt_tcp_64", "rtt_quic_64"]:
    for s in ["after", "zenoh"]:
        for k, x in by[(w, s)].items():
            y = by[(w, s + "-chain")].get(k)
            by[(w, s + "-best")][k] = y if y and y.get("p50_us", 1e18) < x.get("p50_us", 1e18) else x
print("\nsummary (medians over rounds; ratio: per-round min / median / max)")
for s in ["raw", "tokio", "after", "before", "zenoh", "after-chain", "zenoh-chain", "after-best", "zenoh-best"]:
    if (("rtt_tcp_64", s)) in by:
        print(f"  rtt tcp 64 B {s:11}: p50 {med('rtt_tcp_64', s, 'p50_us'):7.1f} us  p99 {med('rtt_tcp_64', s, 'p99_us'):7.1f} us")
for s in ["after", "before", "zenoh", "after-chain", "zenoh-chain", "after-best", "zenoh-best"]:
    if (("rtt_quic_64", s)) in by:
        print(f"  rtt quic 64 B {s:11}: p50 {med('rtt_quic_64', s, 'p50_us'):7.1f} us  p99 {med('rtt_quic_64', s, 'p99_us'):7.1f} us")
for s in ["after", "before", "zenoh"]:
    if (("thr_8", s)) in by:
        print(f"  thr 8 B     {s:6}: {med('thr_8', s, 'msgs_per_s'):12,.0f} msgs/s")
for a, b in [("after", "zenoh"), ("after-chain", "zenoh-chain"), ("after-best", "zenoh-best"), ("after", "zenoh-best"),
             ("before", "zenoh"), ("after", "before"), ("after", "raw"), ("after-best", "raw"),
             ("after", "tokio"), ("after-best", "tokio")]:
    if ("rtt_tcp_64", a) in by and ("rtt_tcp_64", b) in by:
        lo, m, hi = ratios("rtt_tcp_64", a, b, "p50_us")
        print(f"  rtt p50 {a}/{b}: {lo:.2f} / {m:.2f} / {hi:.2f}")
        lo, m, hi = ratios("rtt_tcp_64", a, b, "p99_us")
        print(f"  rtt p99 {a}/{b}: {lo:.2f} / {m:.2f} / {hi:.2f}")
    if ("rtt_quic_64", a) in by and ("rtt_quic_64", b) in by:
        lo, m, hi = ratios("rtt_quic_64", a, b, "p50_us")
        print(f"  quic p50 {a}/{b}: {lo:.2f} / {m:.2f} / {hi:.2f}")
    if ("thr_8", a) in by and ("thr_8", b) in by:
        lo, m, hi = ratios("thr_8", a, b, "msgs_per_s")
        print(f"  thr 8 B {a}/{b}: {lo:.2f} / {m:.2f} / {hi:.2f}")
EOF
