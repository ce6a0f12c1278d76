#!/usr/bin/env bash
# HTTPS benchmark: wrk against nginx and portcullis-proxy terminating TLS with the same
# certificate (ECDSA P-256, generated per run), the same protocols (TLS 1.2 + 1.3) and the same
# AEAD/ECDHE suites, both proxying to one plain nginx upstream (`return 200 "ok\n"`).
#
# Scenarios:
#   keepalive   CONNECTIONS long-lived TLS connections (the target: >= 1.0x nginx)
#   newconn     `Connection: close` on every request: one full handshake per request
# Each proxy is pinned to PROXY_CPU (and runs one worker), wrk and the upstream to LOAD_CPU.
# Rounds are interleaved (the proxy order alternates every round); medians per proxy and
# scenario, and the Portcullis/nginx ratio measured in the same run, are printed and written
# to RESULTS_DIR/https-STAMP.jsonl. The method is that of bench/run-http.sh (bench/README.md).
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 THREADS=1 PROXY_CPU=0 LOAD_CPU=1
#   SCENARIOS="keepalive newconn"
#   PORTCULLIS_BIN=<repo>/target/release/portcullis-proxy (built with cargo if missing)
#   RESULTS_DIR=<repo>/bench/results  KEEP_TMP=1
# Smoke run (seconds, numbers meaningless): ROUNDS=1 DURATION=2s CONNECTIONS=8 bench/run-https.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SCENARIOS=${SCENARIOS:-keepalive newconn}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
# What both servers offer: TLS 1.2 AEAD suites with ECDHE (TLS 1.3 suites are AEAD by design).
TLS12_CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"

log() { printf '[bench-https] %s\n' "$*" >&2; }
die() { printf '[bench-https] error: %s\n' "$*" >&2; exit 1; }

require_tools "Debian: apt-get install nginx wrk curl openssl util-linux" nginx wrk curl openssl taskset
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $PORTCULLIS_BIN ]]; then
    log "building $PORTCULLIS_BIN"
    (cd "$ROOT" && cargo build --release -p portcullis-proxy) || die "build failed"
fi
if (($(nproc) < 2)); then PROXY_CPU=0 LOAD_CPU=0; log "warning: one CPU; proxy and load share it"; fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-https.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$?
    stop_pids
    if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ok() { # port
    for _ in $(seq 1 300); do
        [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 --resolve "bench.test:$1:127.0.0.1" "https://bench.test:$1/" || true) == 200 ]] && return 0
        sleep 0.1
    done
    die "port $1 not ready"
}

# ---------------------------------------------------------------- certificate (one for both)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null

UP=$(free_port); NGX=$(free_port); PC=$(free_port); PC_PLAIN=$(free_port); PC_ADMIN=$(free_port)
nginx_conf() { # dir body
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $1/nginx.pid;
events { worker_connections 4096; }
http {
    client_body_temp_path $1/cb; proxy_temp_path $1/pt; fastcgi_temp_path $1/ft;
    uwsgi_temp_path $1/ut; scgi_temp_path $1/st;
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
$2
}
EOF
}
nginx_conf "$TMP/upstream" "    server { listen 127.0.0.1:$UP backlog=4096; location / { return 200 \"ok\n\"; } }"
nginx_conf "$TMP/nginx" "    upstream backend { server 127.0.0.1:$UP; keepalive 64; }
    server {
        # 'listen … http2' works on every nginx (newer ones only warn that it is deprecated).
        listen 127.0.0.1:$NGX ssl http2 backlog=4096;
        ssl_certificate $TMP/tls.crt;
        ssl_certificate_key $TMP/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers $TLS12_CIPHERS;
        ssl_prefer_server_ciphers off;
        # Portcullis offers no resumption across processes either; full handshakes on both.
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    }"
for d in upstream nginx; do
    "$NGINX" -t -q -p "$TMP/$d" -c "$TMP/$d/nginx.conf" -e "$TMP/$d/error.log" || die "nginx $d config"
done
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" &
PIDS+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" &
PIDS+=($!)

tls_bench_manifests "$TMP/manifests" "$TMP/tls.crt" "$TMP/tls.key" "$UP"
taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$TMP/manifests" --workers 1 --no-audit \
    --listen "127.0.0.1:$PC_PLAIN" --tls-listen "127.0.0.1:$PC" --admin-listen "127.0.0.1:$PC_ADMIN" \
    >/dev/null 2>"$TMP/portcullis.log" &
PIDS+=($!)

declare -A PORT=([nginx]=$NGX [portcullis]=$PC)
wait_ok "${PORT[nginx]}"
wait_ok "${PORT[portcullis]}"
for p in nginx portcullis; do
    proto=$(openssl s_client -connect "127.0.0.1:${PORT[$p]}" -servername bench.test </dev/null 2>/dev/null |
        awk '/^New, / {sub(",", "", $2); print $2, $NF; exit}')
    log "$p negotiates: $proto"
done

# ---------------------------------------------------------------- runs
mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/https-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$OUT"
run_wrk() { # proxy scenario round
    local args=(-t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -H "Host: bench.test")
    [[ $2 == newconn ]] && args+=(-H "Connection: close")
    taskset -c "$LOAD_CPU" wrk "${args[@]}" "https://127.0.0.1:${PORT[$1]}/" >"$TMP/wrk.out" 2>&1 || true
    local rps p99 errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$TMP/wrk.out")
    p99=$(awk '/^ +99%/ {print $2}' "$TMP/wrk.out")
    errors=$(awk '/Socket errors|Non-2xx/' "$TMP/wrk.out" | tr '\n' ' ')
    printf '{"proxy":"%s","scenario":"%s","round":%d,"rps":%s,"p99":"%s","errors":"%s"}\n' \
        "$1" "$2" "$3" "${rps:-0}" "${p99:-}" "$errors" >>"$OUT"
    log "round $3 $2 $1: ${rps:-0} req/s, p99 ${p99:-?} $errors"
}
for ((r = 1; r <= ROUNDS; r++)); do
    order=(nginx portcullis)
    ((r % 2 == 0)) && order=(portcullis nginx)
    for s in $SCENARIOS; do for p in "${order[@]}"; do run_wrk "$p" "$s" "$r"; done; done
done

printf '\n%-10s %12s %12s %8s\n' scenario nginx portcullis ratio
for s in $SCENARIOS; do
    n=$(grep "\"proxy\":\"nginx\",\"scenario\":\"$s\"" "$OUT" | sed 's/.*"rps":\([0-9.]*\).*/\1/' | median)
    p=$(grep "\"proxy\":\"portcullis\",\"scenario\":\"$s\"" "$OUT" | sed 's/.*"rps":\([0-9.]*\).*/\1/' | median)
    ratio=$(awk -v a="$p" -v b="$n" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-10s %12s %12s %8s\n' "$s" "$n" "$p" "$ratio"
    printf '{"type":"summary","scenario":"%s","nginx_rps":%s,"portcullis_rps":%s,"ratio":"%s"}\n' \
        "$s" "$n" "$p" "$ratio" >>"$OUT"
done
log "results: $OUT"
