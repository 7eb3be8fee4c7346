#!/usr/bin/env bash
# Client failover between routers as processes (issue 10, scenario 3), repeated: routers R1, R2
# (site S) and R3 (site T) in network namespaces on one bridge, listening on tcp/0.0.0.0; a
# client configured with R1 only learns R2 and R3 from it; 1 kHz both ways between it and a
# client at R3. R1 is SIGKILLed (reset), later R2 SIGSTOPped (silent). Prints each round's
# outages (largest gap between arrivals around each failure) and duplicates, then the median
# and maximum. Needs root.
#
#   examples/compare/backbone_failover.sh [ROUNDS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
cargo build --release -q -p hypha-tests --tests --bins
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  cargo test --release -q -p hypha-tests --test backbone_failover -- --nocapture 2>/dev/null \
    | grep '"figure":"client_failover"' | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for k in sorted(k for k in rows[0] if k != "figure"):
    v = [r[k] for r in rows]
    print(f"{k:>20}: median {statistics.median(v):9.1f}  max {max(v):9.1f}  ({len(v)} rounds)")
PY
