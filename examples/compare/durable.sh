#!/usr/bin/env bash
# Networked storage figures (issue 17): ingest until stored, replay, storage RSS, disk bytes per
# sample, for each backend and payload size. Not part of CI. JetStream in the same run is not
# scripted yet (see BENCHMARKS.md).
#   examples/compare/durable.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000000}
RUNS=${2:-3}
cargo build --release -p hypha-examples --example durable_bench
BIN=${CARGO_TARGET_DIR:-target}/release/examples/durable_bench
echo "| backend | payload | N | put/s seen by the publisher | stored/s | replay/s | RSS after ingest MB | RSS peak MB | disk B/sample |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for size in 64 1024; do
  for backend in redb sled memory; do
    timeout 1800 "$BIN" run --n "$N" --size "$size" --backend "$backend" --runs "$RUNS"
  done
done
