#!/usr/bin/env bash
# WAF on vs off through the proxy, benign traffic (issue #6):
#   off  portcullis-proxy, one ApiRoute to the upstream, no WafPolicy
#   on   the same route with a WafPolicy (PL1, Block, all rule groups, default limits)
# Scenarios: GET with four query arguments; POST with a 1 KiB JSON body (wrk Lua script).
# Both proxies are pinned to PROXY_CPU, wrk and the upstream (nginx `return 200`) to
# LOAD_CPU. Rounds are interleaved (off/on alternate and swap order every round); we report
# medians and the on/off throughput ratio per scenario, measured in the same run, and the
# proxy's CPU time per request (utime+stime from /proc over each run / requests served): on a
# busy machine throughput follows the neighbours' load, CPU per request much less so, and
# off/on CPU per request is the throughput ratio a dedicated core would give.
# Targets from the issue: on/off >= 0.8 for the GET, >= 0.6 for the JSON POST.
# Adapted from bench/run-http.sh (same method, fewer features).
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 THREADS=1 WARMUP=2s PROXY_CPU=0 LOAD_CPU=1
#   PORTCULLIS_BIN=<repo>/target/release/portcullis-proxy (built with cargo if missing)
#   SMOKE=1   one round of 2 s per target: checks the script, not the numbers
#   KEEP_TMP=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
if [[ ${SMOKE:-0} == 1 ]]; then ROUNDS=1 DURATION=2s WARMUP=1s; fi
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}

log() { printf '[bench-waf] %s\n' "$*" >&2; }
die() { printf '[bench-waf] error: %s\n' "$*" >&2; exit 1; }

require_tools "apt-get install nginx wrk curl util-linux" nginx wrk curl taskset
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $PORTCULLIS_BIN ]]; then
    log "building portcullis-proxy (release)"
    (cd "$ROOT" && cargo build --release -p portcullis-proxy) >&2
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-waf.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    stop_pids
    if [[ $KEEP_TMP == 1 || $rc -ne 0 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


wait_ok() { # url pid name
    for _ in $(seq 1 600); do
        kill -0 "$2" 2>/dev/null || die "$3 exited during start-up (see $TMP)"
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true) == 200 ]] && return 0
        sleep 0.05
    done
    die "$3 not ready at $1"
}

# ---------------------------------------------------------------- upstream (nginx)
UP_PORT=$(free_port)
mkdir -p "$TMP/up"
cat >"$TMP/up/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/up/body;
    proxy_temp_path $TMP/up/proxy;
    fastcgi_temp_path $TMP/up/fastcgi;
    uwsgi_temp_path $TMP/up/uwsgi;
    scgi_temp_path $TMP/up/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        client_body_buffer_size 16k;
        location / { return 200 "ok\n"; }
    }
}
EOF
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/up" -c "$TMP/up/nginx.conf" >/dev/null 2>&1 &
PIDS+=($!)
wait_ok "http://127.0.0.1:$UP_PORT/" "${PIDS[-1]}" upstream

# ---------------------------------------------------------------- proxies
declare -A URL PID
start_proxy() { # name with_waf
    local name=$1 waf=$2 port admin
    port=$(free_port)
    admin=$(free_port)
    mkdir -p "$TMP/$name"
    {
        cat <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream:
    targets: [{url: "http://127.0.0.1:$UP_PORT"}]
  securityHeaders: false
EOF
        if [[ $waf == 1 ]]; then
            cat <<EOF
  wafPolicy: bench
---
apiVersion: portcullis.dev/v1alpha1
kind: WafPolicy
metadata: {name: bench, namespace: default}
spec:
  mode: Block
  paranoiaLevel: 1
EOF
        fi
    } >"$TMP/$name/bench.yaml"
    taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$TMP/$name" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --no-audit \
        >/dev/null 2>"$TMP/$name/stderr.log" &
    PIDS+=($!)
    wait_ok "http://127.0.0.1:$admin/readyz" "${PIDS[-1]}" "$name"
    URL[$name]="http://127.0.0.1:$port"
    PID[$name]=${PIDS[-1]}
}
start_proxy off 0
start_proxy on 1

GET_PATH="/api/v1/products?category=shoes&page=2&sort=-price&q=red+running+shoes"
python3 "$ROOT/bench/waf-body.py" "$TMP/body.json"
cat >"$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$TMP/body.json", "r")
wrk.body = f:read("*a")
f:close()
EOF
# Sanity: both proxies answer 200 to both scenarios (a WAF false positive would be a 403).
for name in off on; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$name]}$GET_PATH")
    [[ $code == 200 ]] || die "$name: GET answered $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary @"$TMP/body.json" "${URL[$name]}/api/v1/orders")
    [[ $code == 200 ]] || die "$name: POST answered $code"
done
code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[on]}/api?q=1'%20OR%20'1'='1")
[[ $code == 403 ]] || die "the WAF did not block a SQLi probe (got $code)"

run_wrk() { # name scenario duration out
    local url args=()
    if [[ $2 == get ]]; then url="${URL[$1]}$GET_PATH"; else url="${URL[$1]}/api/v1/orders"; args=(-s "$TMP/post.lua"); fi
    taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" --latency "${args[@]}" "$url" >"$4" 2>&1
}
rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
# cpu_us_per_request TICKS WRK_OUTPUT
cpu_us_per_request() {
    awk -v t="$1" -v hz="$CLK_TCK" '/ requests in / { r = $1 } END { printf "%.1f", t * 1e6 / hz / r }' "$2"
}
p99_of() { awk '/^ +99% / { v = $2; u = v; sub(/^[0-9.]+/, "", u); n = v + 0;
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; print n }' "$1"; }
non2xx_of() { awk '/Non-2xx/ { print $NF }' "$1"; }

for s in get post; do for n in off on; do run_wrk "$n" "$s" "$WARMUP" "$TMP/warmup-$n-$s.txt"; done; done
declare -A RPS P99 CPU
for ((r = 1; r <= ROUNDS; r++)); do
    order=(off on)
    ((r % 2 == 0)) && order=(on off)
    for s in get post; do
        for n in "${order[@]}"; do
            f="$TMP/r$r-$n-$s.txt"
            t0=$(proc_ticks "${PID[$n]}")
            run_wrk "$n" "$s" "$DURATION" "$f"
            t1=$(proc_ticks "${PID[$n]}")
            CPU[$n-$s]+="$(cpu_us_per_request $((t1 - t0)) "$f") "
            bad=$(non2xx_of "$f")
            [[ -z $bad ]] || die "$n/$s: $bad non-2xx responses (see $f)"
            RPS[$n-$s]+="$(rps_of "$f") "
            P99[$n-$s]+="$(p99_of "$f") "
            log "round $r $s $n: $(rps_of "$f") req/s, $(cpu_us_per_request $((t1 - t0)) "$f") CPU µs/request"
        done
    done
done

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "WAF on vs off, benign traffic, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, medians; proxy on core $PROXY_CPU, wrk + upstream on core $LOAD_CPU; load average at the end $LOAD."
echo
echo "| scenario | WAF off req/s | WAF on req/s | on/off | target | p99 off ms | p99 on ms | CPU µs/req off | CPU µs/req on | on/off by CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for s in get post; do
    off=$(tr ' ' '\n' <<<"${RPS[off-$s]}" | awk NF | median)
    on=$(tr ' ' '\n' <<<"${RPS[on-$s]}" | awk NF | median)
    p99off=$(tr ' ' '\n' <<<"${P99[off-$s]}" | awk NF | median)
    p99on=$(tr ' ' '\n' <<<"${P99[on-$s]}" | awk NF | median)
    cpuoff=$(tr ' ' '\n' <<<"${CPU[off-$s]}" | awk NF | median)
    cpuon=$(tr ' ' '\n' <<<"${CPU[on-$s]}" | awk NF | median)
    target=$([[ $s == get ]] && echo 0.8 || echo 0.6)
    ratio=$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.2f", a / b }')
    cpu_ratio=$(awk -v a="$cpuoff" -v b="$cpuon" 'BEGIN { printf "%.2f", a / b }')
    verdict=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print (r >= t) ? "met" : "MISSED" }')
    label=$([[ $s == get ]] && echo "GET, 4 query args" || echo "POST, 1 KiB JSON")
    echo "| $label | $off | $on | ×$ratio | ≥ $target ($verdict) | $p99off | $p99on | $cpuoff | $cpuon | ×$cpu_ratio |"
done
