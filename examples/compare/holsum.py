#!/usr/bin/env python3
"""Summary of hol.sh output (JSON lines on stdin or in the file given): per transport, system
(or Hypha build, with BEFORE=), case and bulk rate, each round's p99 and the median of the rounds
(p50 and the bulk rate reached beside it). Usage: hol.sh | holsum.py, or holsum.py FILE."""
import json, statistics, sys
from collections import defaultdict

rows = defaultdict(list)
for line in (open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin):
    line = line.strip()
    if not line.startswith("{"):
        continue
    j = json.loads(line)
    r = j["result"]
    who = j.get("system") or ("hypha " + j["build"] if "build" in j else "hypha")
    if j.get("blast_rate") is not None:
        who += f" beside raw blast {j['blast_rate']}"
    case = "no bulk" if not r.get("bulk") else ("second link" if r.get("bulk_separate") else "same link")
    rate = r.get("bulk_rate") or 0
    rows[(j["proto"], case, rate if r.get("bulk") else -1, who)].append(r)
for (proto, case, rate, who), rs in sorted(rows.items()):
    med = lambda k: statistics.median(x.get(k) or 0 for x in rs)
    bulk = "" if rate < 0 else f" at {'saturating' if rate == 0 else f'{rate:g} MiB/s'}"
    each = ", ".join(format(x["p99_us"], ",.0f") for x in rs)
    what = case + bulk
    print(f"{proto:4} {what:32} {who:28} p99 {med('p99_us'):8,.0f} µs "
          f"(rounds {each}), p50 {med('p50_us'):6,.0f}"
          + ("" if rate < 0 else f", bulk {med('bulk_mib_s'):,.0f} MiB/s"))
