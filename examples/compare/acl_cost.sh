#!/usr/bin/env bash
# The cost of access control on the hot path: 8-byte throughput between two processes (thr_pub
# -> thr_sub over TCP on loopback) without rules, and with a 100-rule [acl] enforced by both
# nodes (99 rules that do not match the bench keys, for other principals and keys, then the one
# that allows them), interleaved round by round.
#
#   examples/compare/acl_cost.sh        # REPS rounds (default 5) of SECS seconds (default 4)
#
# Prints one JSON line per run and a summary: medians and the per-round ratio with/without.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REPS=${REPS:-5}
SECS=${SECS:-4}
cargo build --release -q -p hypha-examples --example thr_pub --example thr_sub --manifest-path "$ROOT/Cargo.toml"
HX="$ROOT/target/release/examples"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

ACL="$WORK/acl.toml"
{
  echo '[acl]'
  echo 'default = "deny"'
  for i in $(seq 1 99); do
    if [ $((i % 3)) -eq 0 ]; then perm=deny; else perm=allow; fi
    printf '[[acl.rule]]\nid = "r%d"\npermission = "%s"\nwho = ["robot/%d", "role:none%d"]\nops = ["put", "sub"]\nkeys = ["fleet/car%d/**", "site%d/*/x"]\n' \
      "$i" "$perm" "$i" "$i" "$i" "$i"
  done
  echo '[[acl.rule]]'
  echo 'id = "bench"'
  echo 'who = ["anonymous"]'
  echo 'ops = ["put", "sub"]'
  echo 'keys = ["bench/**"]'
  echo '[acl.roles]'
  for i in $(seq 1 99); do printf 'none%d = ["nobody/%d"]\n' "$i" "$i"; done
} > "$ACL"
[ "$(grep -c '^\[\[acl.rule\]\]' "$ACL")" -eq 100 ] || { echo "acl file does not hold 100 rules" >&2; exit 1; }

OUT="$WORK/results.jsonl"
run() { # variant round
  local ep spid ppid res extra=()
  [ "$1" = acl ] && extra=(--acl "$ACL")
  ep="tcp/127.0.0.1:$(port)"
  "$HX/thr_sub" --listen "$ep" --secs "$SECS" "${extra[@]}" > "$WORK/sub.out" 2>"$WORK/sub.err" & spid=$!; PIDS+=("$spid")
  sleep 0.3
  "$HX/thr_pub" --connect "$ep" --listen tcp/127.0.0.1:0 --size 8 "${extra[@]}" >/dev/null 2>"$WORK/pub.err" & ppid=$!; PIDS+=("$ppid")
  timeout $((SECS + 60)) tail --pid="$spid" -f /dev/null || true
  stop "$ppid"; stop "$spid"
  res=$(grep msgs_per_s "$WORK/sub.out" | tail -1 || true)
  [ -n "$res" ] || { echo "  ($1 round $2: no result)" >&2; cat "$WORK/sub.err" >&2; return; }
  printf '{"variant":"%s","round":%d,"result":%s}\n' "$1" "$2" "$res" | tee -a "$OUT"
}
for r in $(seq 1 "$REPS"); do
  echo "== round $r/$REPS" >&2
  if [ $((r % 2)) -eq 1 ]; then run none "$r"; run acl "$r"; else run acl "$r"; run none "$r"; fi
done
python3 - "$OUT" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["variant"], {})[r["round"]] = r["result"]["msgs_per_s"]
for v in ["none", "acl"]:
    print(f"  thr 8 B {v:4}: {st.median(by[v].values()):12,.0f} msgs/s (median of {len(by[v])})")
ratios = [by["acl"][k] / by["none"][k] for k in by["acl"] if k in by["none"]]
print(f"  acl/none per round: min {min(ratios):.3f} median {st.median(ratios):.3f} max {max(ratios):.3f}")
PY
