#!/usr/bin/env bash
# Soak: runs the chaos tests (tests/e2e/chaos.rs) again and again, each with faults for
# SOAK_SECS seconds (default 600), until SOAK_RUNS runs (default 10) are done or one fails.
# Each run prints its seed, the faults injected, the source transactions committed, and per
# table the rows lost, extra and differing, and the row versions applied twice. Not part of CI.
#
#   scripts/soak.sh                      # 10 runs of 10 minutes: the sources and shapes in turn
#   SOAK_RUNS=3 SOAK_SECS=120 scripts/soak.sh
#   SLUICE_CHAOS_SEED=123 SOAK_RUNS=1 scripts/soak.sh   # replay one seed
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
runs=${SOAK_RUNS:-10}
secs=${SOAK_SECS:-600}
bash scripts/deps.sh
cargo nextest run --workspace --no-run
for i in $(seq 1 "$runs"); do
  case $((i % 6)) in
    1) test=chaos::chaos_postgres_source_one_process ;;
    2) test=chaos::chaos_mariadb_source_capture_and_apply_processes ;;
    3) test=chaos::chaos_postgres_source_capture_and_apply_processes ;;
    4) test=chaos::chaos_mariadb_source_one_process ;;
    5) test=chaos::chaos_mysql8_source_capture_and_apply_processes ;;
    *) test=chaos::chaos_mysql8_source_one_process ;;
  esac
  echo "[soak] run $i/$runs: $test, $secs s of faults"
  log=$(mktemp)
  if ! SLUICE_CHAOS_SECS=$secs cargo nextest run --workspace --profile soak --no-capture \
      --run-ignored all -E "test(=$test)" >"$log" 2>&1; then
    grep -E '^chaos:|^kept |panicked|FAIL|TIMEOUT' -A3 "$log" || tail -40 "$log"
    echo "[soak] run $i failed (whole output: $log)"
    exit 1
  fi
  grep -E '^chaos:' "$log"
  rm -f "$log"
done
echo "[soak] $runs runs passed"
