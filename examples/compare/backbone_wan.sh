#!/usr/bin/env bash
# The router backbone over impaired WAN links (issue 10), repeated: three sites in a triangle
# (A–B 20 ms, B–C 20 ms, A–C 60 ms one way, LOSS % on each link, userspace impairment bridge in
# network namespaces), 1 kHz from a client at A to a client at C and 1,000 gets from C to a
# queryable at A; steady state, then a silent cut of A–B under 1 kHz both ways (A→C, C→A) and
# 100 gets/s from C, then the cut restored under the same traffic. Prints each round's figures
# and the median and maximum. Needs root.
#
#   examples/compare/backbone_wan.sh [ROUNDS=5] [SECS=20] [LOSS=0.5]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}; secs=${2:-20}; loss=${3:-0.5}
cargo build --release -q -p hypha-tests --bins
# Build the test once and run its binary: in a shared working tree, `cargo test` in each round
# would rebuild whatever others edited in between.
bin=$(cargo test --release -q -p hypha-tests --test backbone_wan --no-run --message-format=json \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin)
    if m.get("executable") and "test" in m["target"]["kind"]][-1])')
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  # Into a file, then the figure line (a failed round has none and is left out, said below).
  HYPHA_WAN_SECS=$secs HYPHA_WAN_LOSS=$loss "$bin" --nocapture >"$out.round" 2>/dev/null \
    || echo "round $r failed" >&2
  grep -o '{.*"figure":"backbone_wan".*' "$out.round" | tee -a "$out" || true
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for k in ["p50_ms", "p99_ms", "cut_outage_ms", "cut_lost", "cut_dups", "cut_outage_ca_ms",
          "cut_lost_ca", "cut_dups_ca", "get_outage_ms", "gets_unanswered", "gets_twice",
          "restore_ms", "restore_lost", "restore_reordered", "detour_p50_ms", "detour_p99_ms",
          "token_deletes"]:
    v = [r[k] for r in rows]
    print(f"{k:>17}: median {statistics.median(v):9.1f}  max {max(v):9.1f}  ({len(v)} rounds)")
PY
