#!/usr/bin/env bash
# Rate-limiting overhead: wrk against three portcullis-proxy instances routing `/` to the same
# nginx upstream (`return 200 "ok\n"`):
#   plain   no RateLimitPolicy
#   local   one ClientIp policy, local backend (limit high enough to never deny)
#   redis   the same policy with a Redis backend (redis-server on the load core)
# Method as bench/run-http.sh (bench/README.md): each proxy pinned to PROXY_CPU, wrk, nginx and
# redis on LOAD_CPU; rounds interleaved (order rotates every round); medians per target and
# ratios measured in the same run. Targets from issue 5: redis >= 0.8x local throughput,
# local >= 0.95x plain throughput. p99 "added latency" = p99(target) - p99(plain). Besides
# the ratios of medians it prints each round's paired ratios (targets run back to back) with
# their median, min and max: the spread shows how much of a ratio is the host drifting.
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 THREADS=1 WARMUP=2s PROXY_CPU=0 LOAD_CPU=1
#   PORTCULLIS_BIN=<repo>/target/release/portcullis-proxy (built with cargo if missing)
#   RESULTS_DIR=<repo>/bench/results KEEP_TMP=1
#   FIXED_RATE=5000 FIXED_CONNECTIONS=8   the fixed-rate phase (hey -q): p99 at a load every
#                                         target sustains, so "added latency" is not queueing
#   BREAKDOWN=1   two more targets that split what the local limit costs:
#                   nohdr   the local policy with responseHeaders: false (the decision alone)
#                   static  no policy; the same three RateLimit-* headers as static
#                           responseHeaders (the headers alone, no decision, no formatting)
# Each target's proxy CPU per request (utime+stime from /proc, over the measured run) is
# printed too: with the proxy core saturated it is the cost behind the throughput, and its
# per-round difference to plain ("added µs") is steadier than req/s on a noisy host.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}
BREAKDOWN=${BREAKDOWN:-0}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}

log() { printf '[bench-rl] %s\n' "$*" >&2; }
die() { printf '[bench-rl] error: %s\n' "$*" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi; }
missing=()
for pair in wrk:wrk taskset:util-linux curl:curl redis-server:redis-server redis-cli:redis-tools \
    hey:hey; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $PORTCULLIS_BIN ]]; then
    log "building $PORTCULLIS_BIN"
    (cd "$ROOT" && cargo build --release -p portcullis-proxy)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-rl.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ok() { # URL PID NAME
    for _ in $(seq 1 600); do
        kill -0 "$2" 2>/dev/null || die "$3 exited during start-up (logs in $TMP)"
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true) == 200 ]] && return 0
        sleep 0.05
    done
    die "$3 not ready at $1"
}

# Upstream: nginx on the load core.
UP_PORT=$(free_port)
write_upstream_conf "$TMP/nginx" "$UP_PORT"
start_nginx upstream "$TMP/nginx" "$LOAD_CPU"
wait_ok "http://127.0.0.1:$UP_PORT/" "$LAST_PID" nginx

REDIS_PORT=$(free_port)
taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break; sleep 0.05; done

policy() { # NAME BACKEND-YAML
    cat <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench, namespace: bench}
spec:
  key: ClientIp
  limits: [{requests: 1000000000, period: 1s}]
  backend: $2
---
EOF
}
TARGETS=(plain local redis)
[[ $BREAKDOWN == 1 ]] && TARGETS+=(nohdr static)
declare -A URL PROXY_PID
for target in "${TARGETS[@]}"; do
    dir="$TMP/$target"; mkdir -p "$dir/m"
    refs="[]" extra=""
    case $target in
        local) policy bench "{type: Local}" >"$dir/m/policy.yaml"; refs="[bench]" ;;
        redis) policy bench "{type: Redis, redis: {url: \"redis://127.0.0.1:$REDIS_PORT\", timeout: 50ms}}" >"$dir/m/policy.yaml"; refs="[bench]" ;;
        nohdr) { policy bench "{type: Local}" | sed '/^---$/d'; echo "  responseHeaders: false"; } >"$dir/m/policy.yaml"
            refs="[bench]" ;;
        # What the local target sends early in a second (limit 1e9, reset 1 s).
        static) extra='  responseHeaders: {add: {ratelimit-limit: "1000000000", ratelimit-remaining: "999999999", ratelimit-reset: "1"}}' ;;
    esac
    cat >"$dir/m/route.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: bench}
spec:
  paths: [{value: /}]
  rateLimitPolicies: $refs
$extra
  upstream: {targets: [{url: "http://127.0.0.1:$UP_PORT"}]}
EOF
    p=$(free_port); a=$(free_port)
    taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$dir/m" --listen "127.0.0.1:$p" \
        --admin-listen "127.0.0.1:$a" --workers 1 --no-audit >/dev/null 2>"$dir/stderr.log" &
    PIDS+=($!)
    PROXY_PID[$target]=$!
    URL[$target]="http://127.0.0.1:$p/"
    wait_ok "${URL[$target]}" "${PIDS[-1]}" "portcullis-$target"
done

# parse: "rps p99_ms non2xx"
run_wrk() { # URL DURATION OUTFILE
    taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "$1" >"$3" 2>&1 || true
}
parse() {
    awk '/Requests\/sec/ {rps=$2} /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p99=v}
         /Non-2xx/ {n=$NF} END {printf "%s %s %s\n", rps, p99, (n==""?0:n)}' "$1"
}

N_TARGETS=${#TARGETS[@]}
declare -A RPS P99 ROUND_RPS US ROUND_US PAIRED ADDED
REDIS_LOCAL=""
for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((N_TARGETS - 1))); do
        t=${TARGETS[$(((i + round) % N_TARGETS))]}
        run_wrk "${URL[$t]}" "$WARMUP" /dev/null
        ticks0=$(proc_ticks "${PROXY_PID[$t]}")
        run_wrk "${URL[$t]}" "$DURATION" "$TMP/wrk-$t-$round.txt"
        ticks1=$(proc_ticks "${PROXY_PID[$t]}")
        read -r rps p99 non2xx < <(parse "$TMP/wrk-$t-$round.txt")
        [[ $non2xx == 0 ]] || die "$t answered $non2xx non-2xx responses in round $round"
        reqs=$(awk '/requests in/ { print $1 }' "$TMP/wrk-$t-$round.txt")
        us=$(awk -v t=$((ticks1 - ticks0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
        RPS[$t]+="$rps "; P99[$t]+="$p99 "; US[$t]+="$us "
        ROUND_RPS[$t]=$rps ROUND_US[$t]=$us
        log "round $round $t: $rps req/s, p99 $p99 ms, proxy CPU $us µs/request"
    done
    # The same round's targets ran back to back: their ratio is less exposed to the host
    # drifting over the run than the ratio of medians.
    REDIS_LOCAL+="$(awk -v a="${ROUND_RPS[redis]}" -v b="${ROUND_RPS[local]}" 'BEGIN {printf "%.3f", a/b}') "
    for t in "${TARGETS[@]:1}"; do
        PAIRED[$t]+="$(awk -v a="${ROUND_RPS[$t]}" -v b="${ROUND_RPS[plain]}" 'BEGIN {printf "%.3f", a/b}') "
        ADDED[$t]+="$(awk -v a="${ROUND_US[$t]}" -v b="${ROUND_US[plain]}" 'BEGIN {printf "%.2f", a-b}') "
    done
done

# Fixed rate: the same request rate for every target (hey paces each worker), so p99 shows the
# latency each backend adds rather than how deep the queue grows at saturation.
FIXED_RATE=${FIXED_RATE:-5000}
FIXED_CONNECTIONS=${FIXED_CONNECTIONS:-8}
declare -A FIXED_P99
hey_p99() { awk '/ 99% in / {printf "%.3f\n", $3 * 1000}' "$1"; }
for round in $(seq 1 "$ROUNDS"); do
    # plain, local and redis only: the breakdown targets are about throughput.
    for i in 0 1 2; do
        t=${TARGETS[$(((i + round) % 3))]}
        taskset -c "$LOAD_CPU" hey -z "$DURATION" -c "$FIXED_CONNECTIONS" \
            -q $((FIXED_RATE / FIXED_CONNECTIONS)) "${URL[$t]}" >"$TMP/hey-$t-$round.txt" 2>&1 || true
        grep -q '\[200\]' "$TMP/hey-$t-$round.txt" || die "$t: no 200 answers at the fixed rate"
        ! grep -E '^\s+\[[13-5][0-9][0-9]\]' "$TMP/hey-$t-$round.txt" >/dev/null ||
            die "$t answered non-200 at the fixed rate (round $round)"
        p=$(hey_p99 "$TMP/hey-$t-$round.txt")
        FIXED_P99[$t]+="$p "
        log "fixed $FIXED_RATE req/s round $round $t: p99 $p ms"
    done
done

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/ratelimit-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
    printf '%-8s %12s %10s %14s\n' target req/s p99_ms proxy_us/req
    for t in "${TARGETS[@]}"; do
        printf '%-8s %12s %10s %14s\n' "$t" "$(tr ' ' '\n' <<<"${RPS[$t]}" | grep . | median)" \
            "$(tr ' ' '\n' <<<"${P99[$t]}" | grep . | median)" "$(tr ' ' '\n' <<<"${US[$t]}" | grep . | median)"
    done
} | tee "$OUT.table"
read -r _ plain_rps plain_p99 _ < <(sed -n 2p "$OUT.table")
read -r _ local_rps local_p99 _ < <(sed -n 3p "$OUT.table")
read -r _ redis_rps redis_p99 _ < <(sed -n 4p "$OUT.table")
awk -v pr="$plain_rps" -v lr="$local_rps" -v rr="$redis_rps" -v pp="$plain_p99" -v lp="$local_p99" -v rp="$redis_p99" \
    -v rounds="$ROUNDS" -v dur="$DURATION" -v conns="$CONNECTIONS" 'BEGIN {
    printf "rounds=%s duration=%s connections=%s\n", rounds, dur, conns
    printf "local/plain throughput  %.3f (target >= 0.95)\n", lr/pr
    printf "redis/local throughput  %.3f (target >= 0.80)\n", rr/lr
    printf "p99 added at saturation: local %+.3f ms, redis %+.3f ms (vs plain)\n", lp-pp, rp-pp }' | tee -a "$OUT.table"
spread() {
    local sorted
    sorted=$(tr ' ' '\n' <<<"$1" | grep . | sort -g)
    printf "median %.3f, min %.3f, max %.3f" "$(median <<<"$sorted")" "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")"
}
{
    echo "per-round redis/local: $(spread "$REDIS_LOCAL") ($REDIS_LOCAL)"
    for t in "${TARGETS[@]:1}"; do
        echo "per-round $t/plain: $(spread "${PAIRED[$t]}") (${PAIRED[$t]}); proxy CPU added over plain, µs/request: $(spread "${ADDED[$t]}")"
    done
} | tee -a "$OUT.table"
fp=$(tr ' ' '\n' <<<"${FIXED_P99[plain]}" | grep . | median)
fl=$(tr ' ' '\n' <<<"${FIXED_P99[local]}" | grep . | median)
fr=$(tr ' ' '\n' <<<"${FIXED_P99[redis]}" | grep . | median)
awk -v rate="$FIXED_RATE" -v fp="$fp" -v fl="$fl" -v fr="$fr" 'BEGIN {
    printf "at a fixed %s req/s: p99 plain %.3f ms, local %.3f ms (%+.3f), redis %.3f ms (%+.3f)\n",
        rate, fp, fl, fl-fp, fr, fr-fp }' | tee -a "$OUT.table"
mv "$OUT.table" "$OUT"
log "results: $OUT"
