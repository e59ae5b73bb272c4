#!/usr/bin/env bash
# Sluice end to end on this machine: starts a private source Postgres, a target Postgres and
# an Apache Kafka broker, creates a sample schema with rows, runs `sluice run` (capture and apply), makes
# inserts, updates and deletes in the source and shows the rows arriving in the target.
# Stops everything it started when done.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/deps.sh
cargo build --quiet --bin sluice --example demo -p sluice-test-support -p sluice
exec target/debug/examples/demo target/debug/sluice
