#!/usr/bin/env bash
# Router failures as processes (issue 10, scenarios 3 and 5), repeated; routers R1, R2 (site S)
# and R3 (site T) in network namespaces on one bridge, listening on tcp/0.0.0.0, 1 kHz both ways:
# - client_failover: a client configured with R1 only learns R2 and R3 from it; R1 is
#   SIGKILLed (reset), later R2 SIGSTOPped (silent);
# - two_routers: peers P, Q of site S linked to R1 and R2, a client Y at R3; the designated
#   router is SIGKILLed, restarted, then the other SIGSTOPped for 3 s.
# Prints each round's outages (largest gap between arrivals after each event) and duplicates,
# then the median and maximum. Needs root.
#
#   examples/compare/backbone_failover.sh [ROUNDS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
cargo build --release -q -p hypha-tests --bins
# Build the test once and run its binary: in a shared working tree, `cargo test` in each round
# would rebuild whatever others edited in between.
bin=$(cargo test --release -q -p hypha-tests --test backbone_failover --no-run --message-format=json \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin)
    if m.get("executable") and "test" in m["target"]["kind"]][-1])')
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  # Into a file, then the figure lines (a failed round has none and is left out, said below).
  "$bin" --nocapture >"$out.round" 2>/dev/null || echo "round $r failed" >&2
  grep -oE '\{.*"figure":"(client_failover|two_routers)".*' "$out.round" | tee -a "$out" || true
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for fig in ["client_failover", "two_routers"]:
    rs = [r for r in rows if r["figure"] == fig]
    print(fig)
    for k in sorted(k for k in rs[0] if k not in ("figure", "kept_role")) if rs else []:
        v = [r[k] for r in rs]
        print(f"{k:>20}: median {statistics.median(v):9.1f}  max {max(v):9.1f}  ({len(v)} rounds)")
    if rs and "kept_role" in rs[0]:
        print(f"{'kept_role':>20}: {sum(r['kept_role'] is True for r in rs)} of {len(rs)} rounds")
PY
