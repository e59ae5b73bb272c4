#!/usr/bin/env bash
# Runs Sluice's whole test suite against real services (private Postgres clusters, MariaDB and
# MySQL 8 servers, garage object stores and Apache Kafka brokers that the tests start
# themselves), installing what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

t0=$(date +%s)
bash scripts/deps.sh
t1=$(date +%s)
echo "[test] build"
cargo nextest run --workspace --no-run
t2=$(date +%s)
echo "[test] run"
cargo nextest run --workspace
t3=$(date +%s)
echo "[test] phases: install $((t1 - t0))s, build $((t2 - t1))s, tests $((t3 - t2))s"
