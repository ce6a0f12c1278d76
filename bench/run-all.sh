#!/usr/bin/env bash
# Issue #23's benchmarks in one command, and their charts:
#   run-http.sh                 plain HTTP/1.1: Portcullis, nginx and HAProxy per proxy core
#   run-h2.sh                   HTTP/2 (prior knowledge, TLS) against HTTP/1.1 per proxy core
#   run-auth.sh (full stack)    JWT + rate limit + WAF, GET and 1 KiB JSON, against plain
#   routing-instructions.sh     10 and 10,000 routes through the proxy (callgrind)
#   routing (bench crate)       the route lookup alone at 10 to 10,000 routes
# Raw results go to bench/results (each script's own file); charts of the first three to
# CHART_DIR (default docs/, as docs/benchmarks.md shows them). Each script's own variables
# (ROUNDS, DURATION, PROXY_CPU, LOAD_CPU, PORTCULLIS_BIN...) pass through. Takes ~15 minutes
# with the defaults; run it on a quiet machine (every script reports the other load it saw).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART_DIR=${CHART_DIR:-$ROOT/docs}
RESULTS=${RESULTS_DIR:-$ROOT/bench/results}
export RESULTS_DIR=$RESULTS
cd "$ROOT"
cargo build --release --locked -p portcullis-proxy --bin portcullis-proxy \
    -p portcullis-bench --bin routing --bin auth-tokens >&2

newest() { ls -t "$RESULTS"/"$1"-*.jsonl | head -n1; }
section() { printf '\n## %s\n\n' "$*"; }

section "Plain HTTP/1.1 against nginx and HAProxy"
bash bench/run-http.sh
python3 bench/chart.py "$(newest http)" "$CHART_DIR/bench-http.svg"

section "HTTP/2 against HTTP/1.1"
bash bench/run-h2.sh
python3 bench/chart.py "$(newest h2)" "$CHART_DIR/bench-h2.svg"

section "Full policy stack against plain proxying"
SCENARIOS="plain plain-json full-get full-json" bash bench/run-auth.sh
python3 bench/chart.py "$(newest auth)" "$CHART_DIR/bench-full-stack.svg"

section "10,000 routes"
bash bench/routing-instructions.sh
taskset -c "${PROXY_CPU:-0}" "${CARGO_TARGET_DIR:-$ROOT/target}/release/routing"

printf '\nCharts: %s\n' "$CHART_DIR/bench-{http,h2,full-stack}.svg"
