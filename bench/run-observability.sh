#!/usr/bin/env bash
# Cost of decision records and trace context (sampling off) against the plain proxy, measured
# in the same run (issue #21). wrk against portcullis-proxy instances (standalone, --workers 1,
# --no-audit, pinned to PROXY_CPU, one under load at a time), all proxying `/` to one nginx
# upstream (`return 200 "ok\n"`, on LOAD_CPU with wrk):
#   plain      --decision-buffer 0 --no-trace-context: no decision records, no trace headers
#   observed   the defaults: decision records (10k denials, 1% of allowed requests sampled),
#              W3C trace context started for every request (no traceparent sent), sampling 0,
#              no OTLP export
#   observed-parent  the same with wrk sending an unsampled `traceparent` (parsed, continued)
#   plain-parent     plain with the same header sent (forwarded untouched): the baseline of
#              observed-parent, since the header costs parsing and forwarding in any proxy
# The figure is proxy CPU time per request from /proc (utime+stime of the proxy over the
# requests wrk completed), compared with plain: throughput on this rig is capped by the load
# core, CPU per request is not. Rounds are interleaved (the order rotates every round); we
# report medians. Target: observed costs ≤ 2% more CPU per request than plain.
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 THREADS=1 WARMUP=2s PROXY_CPU=0 LOAD_CPU=1
#   PORTCULLIS_BIN=<target>/release/portcullis-proxy (built with cargo if missing)
#   RESULTS_DIR=<repo>/bench/results   KEEP_TMP=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
TARGET_PCT=2

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
require_tools "apt-get install nginx wrk curl util-linux procps" nginx wrk curl taskset pgrep
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WRK=$(command -v wrk)
if [[ ! -x $PORTCULLIS_BIN ]]; then
    log "$PORTCULLIS_BIN missing: cargo build --release -p portcullis-proxy"
    (cd "$ROOT" && cargo build --release --locked -p portcullis-proxy --bin portcullis-proxy) || die "build failed"
fi
"$PORTCULLIS_BIN" --help | grep -q -- --decision-buffer || die "$PORTCULLIS_BIN has no --decision-buffer (built before issue #21?)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-obs.XXXXXX")
chmod 755 "$TMP"
PIDS=()
WRK_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $WRK_PID ]] && kill "$WRK_PID" 2>/dev/null
    stop_pids
    if [[ $KEEP_TMP == 1 || $rc -ne 0 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

UP_PORT=$(free_port)
write_upstream_conf "$TMP/upstream" "$UP_PORT"
start_nginx upstream "$TMP/upstream" "$LOAD_CPU"

wait_ok() { # url
    for _ in $(seq 1 200); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true) == 200 ]] && return 0
        sleep 0.05
    done
    die "$1 not ready"
}
wait_ok "http://127.0.0.1:$UP_PORT/"

mkdir -p "$TMP/manifests"
cat >"$TMP/manifests/bench.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream:
    targets: [{url: "http://127.0.0.1:$UP_PORT"}]
  securityHeaders: false
EOF

declare -A PORT PID HEADER BASELINE
start_proxy() { # name extra-args...
    local name=$1 port admin
    shift
    port=$(free_port)
    admin=$(free_port)
    taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$TMP/manifests" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --workers 1 --no-audit "$@" \
        >/dev/null 2>"$TMP/$name.log" &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    PORT[$name]=$port
    wait_ok "http://127.0.0.1:$admin/readyz"
    wait_ok "http://127.0.0.1:$port/"
}
start_proxy plain --decision-buffer 0 --no-trace-context
start_proxy observed
PARENT="traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
PORT[observed-parent]=${PORT[observed]} PID[observed-parent]=${PID[observed]} HEADER[observed-parent]=$PARENT
PORT[plain-parent]=${PORT[plain]} PID[plain-parent]=${PID[plain]} HEADER[plain-parent]=$PARENT
SCENARIOS=(plain observed plain-parent observed-parent)
BASELINE=([plain]=plain [observed]=plain [plain-parent]=plain-parent [observed-parent]=plain-parent)

run_wrk() { # scenario duration out
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency)
    [[ -n ${HEADER[$1]:-} ]] && args+=(-H "${HEADER[$1]}")
    taskset -c "$LOAD_CPU" "$WRK" "${args[@]}" "http://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$3" >&2; die "wrk failed against $1"; }
    WRK_PID=""
}

if [[ $WARMUP != 0 ]]; then
    for s in "${SCENARIOS[@]}"; do run_wrk "$s" "$WARMUP" "$TMP/warmup-$s.txt"; done
fi

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/observability-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
printf '{"type":"meta","git":"%s","rounds":%d,"duration":"%s","connections":%d,"cpu_model":"%s","loadavg":"%s"}\n' \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$ROUNDS" "$DURATION" "$CONNECTIONS" \
    "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT"

declare -A RPS CPU_US P99
N=${#SCENARIOS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < N; k++)); do
        s=${SCENARIOS[(r + k) % N]}
        f="$TMP/wrk-$r-$s.txt"
        t0=$(proc_ticks "${PID[$s]}")
        run_wrk "$s" "$DURATION" "$f"
        t1=$(proc_ticks "${PID[$s]}")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
        reqs=$(awk '/ requests in / { print $1 }' "$f")
        p99=$(awk '/^ +99% / { v = $2; u = v; sub(/^[0-9.]+/, "", u); n = v + 0;
            if (u == "us") n /= 1000; else if (u == "s") n *= 1000; print n }' "$f")
        non2xx=$(awk '/Non-2xx/ { print $NF }' "$f")
        [[ -z $non2xx ]] || die "$s: $non2xx non-2xx responses"
        us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.3f", 1e6 * d / hz / n }')
        RPS[$s]+="$rps "; CPU_US[$s]+="$us "; P99[$s]+="$p99 "
        printf '{"type":"run","round":%d,"scenario":"%s","rps":%s,"requests":%d,"proxy_cpu_us_per_request":%s,"p99_ms":%s}\n' \
            $((r + 1)) "$s" "$rps" "$reqs" "$us" "$p99" >>"$OUT"
        log "$(printf 'round %d/%d %-16s %8.0f req/s  %6.2f µs CPU/request  p99 %6.2f ms' $((r + 1)) "$ROUNDS" "$s" "$rps" "$us" "$p99")"
    done
done

med() { tr ' ' '\n' <<<"$1" | awk NF | median; }
echo
echo "Decision records + trace context (sampling off) vs plain, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, medians."
echo
echo "| scenario | req/s | proxy CPU µs/request | vs its baseline | p99 ms |"
echo "|---|---:|---:|---:|---:|"
verdict=PASS
for s in "${SCENARIOS[@]}"; do
    base=$(med "${CPU_US[${BASELINE[$s]}]}")
    m=$(med "${CPU_US[$s]}")
    pct=$(awk -v a="$m" -v b="$base" 'BEGIN { printf "%+.1f%%", 100 * (a / b - 1) }')
    printf '| %s | %.0f | %.2f | %s | %.2f |\n' "$s" "$(med "${RPS[$s]}")" "$m" "$pct" "$(med "${P99[$s]}")"
    if [[ $s != plain* ]] && awk -v a="$m" -v b="$base" -v t="$TARGET_PCT" 'BEGIN { exit !(100 * (a / b - 1) > t) }'; then
        verdict=FAIL
    fi
done
echo
echo "Target (decision records + tracing cost ≤ ${TARGET_PCT}% CPU per request): **$verdict**"
printf '{"type":"summary","plain_cpu_us":%s,"observed_cpu_us":%s,"plain_parent_cpu_us":%s,"observed_parent_cpu_us":%s,"target_met":%s}\n' \
    "$(med "${CPU_US[plain]}")" "$(med "${CPU_US[observed]}")" "$(med "${CPU_US[plain-parent]}")" "$(med "${CPU_US[observed-parent]}")" \
    "$([[ $verdict == PASS ]] && echo true || echo false)" >>"$OUT"
echo "Raw results: ${OUT#"$ROOT"/}"
