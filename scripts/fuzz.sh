#!/usr/bin/env bash
# Fuzzes the readers of input Sluice does not control (see fuzz/README.md). Runs outside CI;
# CI runs the regression tests that every finding leaves behind.
#
#   scripts/fuzz.sh run [RUNS] [SECONDS] [TARGET...]
#       each target (default: all) until RUNS executions (default 10000000) or SECONDS
#       (default 1800) have passed, whichever comes first; prints executions and findings
#   scripts/fuzz.sh seeds
#       rewrites fuzz/seeds/{pgoutput,binlog} from real Postgres, MariaDB and MySQL 8
#       servers (the fuzz_seeds e2e tests, with SLUICE_FUZZ_SEEDS set)
#   scripts/fuzz.sh build
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz (installed
# here when missing). Targets are built without a sanitizer: Sluice is safe Rust, what the
# fuzzer looks for is a panic, and the executions run several times faster than under
# AddressSanitizer. Sluice's crates have overflow checks and debug assertions on; its
# dependencies are built as Sluice ships them (fuzz/Cargo.toml says which).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(pgoutput binlog envelope config cel)

need_tools() {
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "error: the nightly toolchain is needed: rustup toolchain install nightly" >&2
        exit 2
    fi
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
}

build() {
    need_tools
    (cd fuzz && cargo +nightly fuzz build -O --sanitizer none)
}

run() {
    local runs=${1:-10000000} seconds=${2:-1800}
    shift 2 || shift $#
    local targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=("${TARGETS[@]}")
    build
    local failed=0
    printf '%-10s %12s %8s %10s  %s\n' target executions seconds corpus findings
    for t in "${targets[@]}"; do
        mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
        local log="fuzz/artifacts/$t/last-run.log" status=0
        (cd fuzz && cargo +nightly fuzz run "$t" -O --sanitizer none \
            "corpus/$t" "seeds/$t" -- \
            -runs="$runs" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1) >"$log" 2>&1 || status=$?
        local execs secs found
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
        found=$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)
        printf '%-10s %12s %8s %10s  %s\n' "$t" "${execs:-?}" "${secs:-?}" \
            "$(find "fuzz/corpus/$t" -type f | wc -l)" "$found"
        if [ "$status" -ne 0 ] || [ "$found" -ne 0 ]; then
            failed=1
            grep -m1 -A3 "panicked at\|ERROR: libFuzzer" "$log" >&2 || true
            echo "  log: $log" >&2
        fi
    done
    return $failed
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    seeds)
        rm -rf fuzz/seeds/pgoutput fuzz/seeds/binlog
        SLUICE_FUZZ_SEEDS="$PWD/fuzz/seeds" cargo nextest run -p sluice --test e2e \
            -E 'test(/fuzz_seeds::/)'
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
