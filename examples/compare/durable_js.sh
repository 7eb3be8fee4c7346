#!/usr/bin/env bash
# Durable streams, Hypha against NATS JetStream in the same run (issue 17). Not part of CI.
#   examples/compare/durable_js.sh [N] [ROUNDS] [INFLIGHT]
# Per round and payload size (64 B, 1 KiB), interleaved so both systems see the same machine:
#  - JetStream (nats-server from apt, file store, one replica; `jetstream/` client,
#    async-nats): acked publish with INFLIGHT acknowledgements in flight (its best style),
#    core publish without ack timed until the stream holds N, an ordered consumer replaying
#    everything; server RSS (VmHWM) and bytes under its store directory;
#  - Hypha (`durable_bench`: the storage in its own process, the default segment log; BACKEND=redb for redb): acked puts
#    (`Ack::Received`, then `Ack::Durable`) with INFLIGHT in flight, Block puts timed until
#    stored, one `_time` replay of everything; storage RSS and disk bytes.
# Prints one JSON line per measurement, then medians and the ratios Hypha / JetStream.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
ROUNDS=${2:-3}
INFLIGHT=${3:-5000}
command -v nats-server >/dev/null || { apt-get update && apt-get install -y nats-server; }
cargo build --release -p hypha-examples --example durable_bench
HB=${CARGO_TARGET_DIR:-target}/release/examples/durable_bench
# JS_BIN: an already built jetstream client (its build takes ~20 min on 2 cores).
if [ -z "${JS_BIN:-}" ]; then
  (cd examples/compare/jetstream && CARGO_TARGET_DIR=target cargo build --release)
  JS_BIN=examples/compare/jetstream/target/release/hypha-jsbench
fi
JB=$JS_BIN
OUT=$(mktemp)
js() { # size mode
  local dir port pid
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  nats-server -js -sd "$dir" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  local ing rep=""
  ing=$(NATS_URL="nats://127.0.0.1:$port" "$JB" ingest "$N" "$1" "$2" "$INFLIGHT")
  if [ "$2" = fire ]; then rep=$(NATS_URL="nats://127.0.0.1:$port" "$JB" replay "$N"); fi
  local rss disk
  rss=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
  disk=$(du -sb "$dir" | cut -f1)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 - "$ing" "$rep" "$rss" "$disk" "$N" "$1" "$2" <<'PY'
import json, sys
ing = json.loads(sys.argv[1]); rep = json.loads(sys.argv[2]) if sys.argv[2] else {}
print(json.dumps({"system": "jetstream", "mode": sys.argv[7], "size": int(sys.argv[6]),
  "n": int(sys.argv[5]), "inflight": ing.get("inflight"), "ingest_per_s": ing["per_s"],
  "replay_per_s": rep.get("per_s", 0), "rss_mb": int(sys.argv[3]),
  "disk_per_sample": round(int(sys.argv[4]) / int(sys.argv[5]))}))
PY
}
hy() { # size [ack]
  if [ -n "${2:-}" ]; then
    "$HB" run --backend "${BACKEND:-log}" --n "$N" --size "$1" --runs 1 --json --ack "$2" --inflight "$INFLIGHT" 2>/dev/null | grep '^{'
  else
    "$HB" run --backend "${BACKEND:-log}" --n "$N" --size "$1" --runs 1 --json 2>/dev/null | grep '^{'
  fi
}
for r in $(seq "$ROUNDS"); do
  for size in 64 1024; do
    js "$size" acked | tee -a "$OUT"
    hy "$size" received | tee -a "$OUT"
    hy "$size" durable | tee -a "$OUT"
    js "$size" fire | tee -a "$OUT"
    hy "$size" | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(system, mode, size, field):
    v = [r[field] for r in rows if r["system"] == system and r["mode"] == mode and r["size"] == size]
    return statistics.median(v) if v else 0
def series(system, mode, size, field):
    return [r[field] for r in rows if r["system"] == system and r["mode"] == mode and r["size"] == size]
print("| payload | figure | JetStream | Hypha | Hypha / JetStream | per-round ratio, min-max |")
print("| --- | --- | ---: | ---: | ---: | --- |")
for size in (64, 1024):
    lines = [
        ("acked ingest/s (Hypha Received)", ("acked", "ingest_per_s"), ("acked-received", "ingest_per_s")),
        ("acked ingest/s (Hypha Durable: fsync)", ("acked", "ingest_per_s"), ("acked-durable", "ingest_per_s")),
        ("fire-and-forget ingest until stored, /s", ("fire", "ingest_per_s"), ("fire", "ingest_per_s")),
        ("replay of everything, /s", ("fire", "replay_per_s"), ("fire", "replay_per_s")),
        ("server / storage RSS, MB", ("fire", "rss_mb"), ("fire", "rss_mb")),
        ("disk bytes per sample", ("fire", "disk_per_sample"), ("fire", "disk_per_sample")),
    ]
    for name, (jm, jf), (hm, hf) in lines:
        j, h = med("jetstream", jm, size, jf), med("hypha", hm, size, hf)
        ratio = f"{h / j:.2f}x" if j else "-"
        # Round k of one system against round k of the other (the same minute of the machine).
        per = [b / a for a, b in zip(series("jetstream", jm, size, jf), series("hypha", hm, size, hf)) if a]
        spread = f"{min(per):.2f}-{max(per):.2f}" if per else "-"
        print(f"| {size} B | {name} | {j:,.0f} | {h:,.0f} | {ratio} | {spread} |")
PY
rm -f "$OUT"
