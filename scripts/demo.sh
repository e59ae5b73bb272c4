#!/usr/bin/env bash
# Sluice end to end on this machine: starts a private Postgres and a tansu broker, creates a
# sample table with rows, runs `sluice run`, makes inserts, updates and deletes, and prints the
# change events as they arrive in Kafka. Stops everything it started when done.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/deps.sh
cargo build --quiet --bin sluice --example demo -p sluice-test-support -p sluice
exec target/debug/examples/demo target/debug/sluice
