#!/usr/bin/env bash
# Portcullis with its WAF vs nginx + ModSecurity v3 + OWASP CRS 3.3.4 (issue #6: Portcullis
# with the WAF on must be >= 30x faster), benign traffic, same upstream, same requests as
# bench/run-waf.sh:
#   portcullis  portcullis-proxy, one ApiRoute with a WafPolicy (PL1, Block, all groups)
#   modsec      nginx proxy_pass with ModSecurity on: CRS 3.3.4 at PL1, anomaly scoring in
#               blocking mode (the CRS defaults: inbound threshold 5), `SecRuleEngine On`
#   nginx       the same nginx without ModSecurity (reference: what ModSecurity adds)
# Scenarios: GET with four query arguments; POST with a 1 KiB JSON body (wrk Lua script).
# Each proxy is pinned to PROXY_CPU (nginx: one worker), wrk and the upstream (nginx
# `return 200`) to LOAD_CPU. Rounds are interleaved and alternate their order; we report
# medians and the portcullis/modsec throughput ratio per scenario, measured in the same run,
# and each proxy's CPU time per request (utime+stime of its processes over each run /
# requests served), which the neighbours' load on a shared machine moves much less.
#
# Parity: neither side writes an audit log (Portcullis --no-audit, SecAuditEngine Off) or
# inspects responses (SecResponseBodyAccess Off; Portcullis has no response inspection);
# SecStatusEngine is Off (it would resolve a DNS name). Both inspect the JSON body
# (ModSecurity's JSON body processor, enabled for application/json as in Debian's
# modsecurity.conf). ModSecurity's own settings otherwise come from Debian's recommended
# /etc/nginx/modsecurity.conf.
#
# Installs the Debian packages it needs (nginx, libnginx-mod-http-modsecurity,
# modsecurity-crs, wrk, curl) with apt-get when they are missing (root only).
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 THREADS=1 WARMUP=2s PROXY_CPU=0 LOAD_CPU=1
#   PORTCULLIS_BIN=<repo>/target/release/portcullis-proxy (built with cargo if missing)
#   SKIP_NGINX=1   leave out the plain nginx reference
#   SMOKE=1        one round of 2 s per target: checks the script, not the numbers
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
SKIP_NGINX=${SKIP_NGINX:-0}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
MODSEC_MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
CRS_SETUP=/etc/modsecurity/crs/crs-setup.conf
CRS_RULES=/usr/share/modsecurity-crs/rules
MODSEC_BASE=/etc/nginx/modsecurity.conf
UNICODE_MAP=/etc/nginx/unicode.mapping

log() { printf '[bench-modsec] %s\n' "$*" >&2; }
die() { printf '[bench-modsec] error: %s\n' "$*" >&2; exit 1; }

missing=()
for tool in nginx wrk curl taskset python3; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
done
[[ -f $MODSEC_MODULE ]] || missing+=(libnginx-mod-http-modsecurity)
[[ -d $CRS_RULES && -f $CRS_SETUP ]] || missing+=(modsecurity-crs)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing: ${missing[*]} (apt-get install nginx wrk curl libnginx-mod-http-modsecurity modsecurity-crs)"
    log "installing Debian packages (missing: ${missing[*]})"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk curl util-linux python3 \
        libnginx-mod-http-modsecurity modsecurity-crs >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CRS_VERSION=$(dpkg-query -W -f='${Version}' modsecurity-crs 2>/dev/null || echo unknown)
MODSEC_VERSION=$(dpkg-query -W -f='${Version}' libmodsecurity3 2>/dev/null || echo unknown)
if [[ ! -x $PORTCULLIS_BIN ]]; then
    log "building portcullis-proxy (release)"
    (cd "$ROOT" && cargo build --release -p portcullis-proxy) >&2
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench-modsec.XXXXXX")
chmod 755 "$TMP" # nginx workers run as an unprivileged user when we are root
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

nginx_conf() { # dir port body(location block) [modsec rules file]
    local d=$1 port=$2 location=$3 rules=${4:-}
    mkdir -p "$d"
    {
        [[ -n $rules ]] && echo "load_module $MODSEC_MODULE;"
        cat <<EOF
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        client_body_buffer_size 16k;
EOF
        if [[ -n $rules ]]; then
            echo "        modsecurity on;"
            echo "        modsecurity_rules_file $rules;"
        fi
        echo "        $location"
        echo "    }"
        echo "}"
    } >"$d/nginx.conf"
}

declare -A URL PID
start_nginx() { # name dir cpu
    "$NGINX" -t -q -p "$2" -c "$2/nginx.conf" -e "$2/error.log" 2>"$2/configtest.log" ||
        { cat "$2/configtest.log" >&2; die "$1: nginx config test failed"; }
    taskset -c "$3" "$NGINX" -p "$2" -c "$2/nginx.conf" -e "$2/error.log" >"$2/stdout.log" 2>&1 &
    PIDS+=($!)
    PID[$1]=$!
}

# ---------------------------------------------------------------- upstream (nginx)
UP_PORT=$(free_port)
nginx_conf "$TMP/up" "$UP_PORT" 'location / { return 200 "ok\n"; }'
start_nginx upstream "$TMP/up" "$LOAD_CPU"
wait_ok "http://127.0.0.1:$UP_PORT/" "${PIDS[-1]}" upstream

PROXY_LOCATION='location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }'

# ---------------------------------------------------------------- nginx + ModSecurity + CRS
MS=$TMP/modsec
mkdir -p "$MS/tmp" "$MS/data"
chmod 777 "$MS/tmp" "$MS/data"
# Debian's recommended ModSecurity settings, then blocking, no audit log, no response
# inspection, no status beacon, our temp dirs; then the CRS as Debian's loader includes it.
{
    grep -v -E '^\s*(SecRuleEngine|SecAuditEngine|SecAuditLog|SecResponseBodyAccess|SecStatusEngine|SecTmpDir|SecDataDir|SecUnicodeMapFile)\b' "$MODSEC_BASE"
    cat <<EOF
SecRuleEngine On
SecAuditEngine Off
SecResponseBodyAccess Off
SecStatusEngine Off
SecTmpDir $MS/tmp
SecDataDir $MS/data
SecUnicodeMapFile $UNICODE_MAP 20127
Include $CRS_SETUP
EOF
    [[ -f /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf ]] &&
        echo "Include /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf"
    echo "Include $CRS_RULES/*.conf"
    [[ -f /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf ]] &&
        echo "Include /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf"
} >"$MS/main.conf"
# The CRS defaults are what we compare with: paranoia level 1, anomaly scoring, blocking at
# an inbound score of 5. Fail loudly if the installed setup says otherwise.
grep -qE '^\s*SecDefaultAction "phase:2,log,auditlog,pass"' "$CRS_SETUP" ||
    die "$CRS_SETUP: unexpected SecDefaultAction (expected the anomaly scoring default)"
if grep -qE '^\s*setvar:tx\.(paranoia_level|executing_paranoia_level)=[2-4]' "$CRS_SETUP"; then
    die "$CRS_SETUP sets a paranoia level above 1"
fi
chmod -R a+rX "$MS"
MS_PORT=$(free_port)
nginx_conf "$MS" "$MS_PORT" "$PROXY_LOCATION" "$MS/main.conf"
start_nginx modsec "$MS" "$PROXY_CPU"
wait_ok "http://127.0.0.1:$MS_PORT/" "${PIDS[-1]}" "nginx+modsecurity"
URL[modsec]="http://127.0.0.1:$MS_PORT"

if [[ $SKIP_NGINX != 1 ]]; then
    NG_PORT=$(free_port)
    nginx_conf "$TMP/nginx" "$NG_PORT" "$PROXY_LOCATION"
    start_nginx nginx "$TMP/nginx" "$PROXY_CPU"
    wait_ok "http://127.0.0.1:$NG_PORT/" "${PIDS[-1]}" nginx
    URL[nginx]="http://127.0.0.1:$NG_PORT"
fi

# ---------------------------------------------------------------- portcullis (WAF on)
PC_PORT=$(free_port)
PC_ADMIN=$(free_port)
mkdir -p "$TMP/portcullis"
cat >"$TMP/portcullis/bench.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream:
    targets: [{url: "http://127.0.0.1:$UP_PORT"}]
  securityHeaders: false
  wafPolicy: bench
---
apiVersion: portcullis.dev/v1alpha1
kind: WafPolicy
metadata: {name: bench, namespace: default}
spec:
  mode: Block
  paranoiaLevel: 1
EOF
taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$TMP/portcullis" \
    --listen "127.0.0.1:$PC_PORT" --admin-listen "127.0.0.1:$PC_ADMIN" --no-audit \
    >/dev/null 2>"$TMP/portcullis/stderr.log" &
PIDS+=($!)
PID[portcullis]=$!
wait_ok "http://127.0.0.1:$PC_ADMIN/readyz" "${PIDS[-1]}" portcullis
URL[portcullis]="http://127.0.0.1:$PC_PORT"

TARGETS=(portcullis modsec)
[[ $SKIP_NGINX != 1 ]] && TARGETS+=(nginx)

# ---------------------------------------------------------------- requests (as run-waf.sh)
GET_PATH="/api/v1/products?category=shoes&page=2&sort=-price&q=red+running+shoes"
python3 "$ROOT/bench/waf-body.py" "$TMP/body.json"
cat >"$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$TMP/body.json", "r")
wrk.body = f:read("*a")
f:close()
EOF
# Sanity: every target answers 200 to both scenarios (a false positive would be a 403),
# and both WAFs block a SQL injection probe.
for name in "${TARGETS[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$name]}$GET_PATH")
    [[ $code == 200 ]] || die "$name: GET answered $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary @"$TMP/body.json" "${URL[$name]}/api/v1/orders")
    [[ $code == 200 ]] || die "$name: POST answered $code"
done
for name in portcullis modsec; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$name]}/api?q=1'%20OR%20'1'='1")
    [[ $code == 403 ]] || die "$name did not block a SQLi probe (got $code)"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary '{"comment": "<script>alert(1)</script>"}' "${URL[$name]}/api/v1/comments")
    [[ $code == 403 ]] || die "$name did not block XSS in a JSON body (got $code)"
done

run_wrk() { # name scenario duration out
    local url args=()
    if [[ $2 == get ]]; then url="${URL[$1]}$GET_PATH"; else url="${URL[$1]}/api/v1/orders"; args=(-s "$TMP/post.lua"); fi
    taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$3" --latency "${args[@]}" "$url" >"$4" 2>&1
}
rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
p50_of() { awk '/^ +50% / { v = $2; u = v; sub(/^[0-9.]+/, "", u); n = v + 0;
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; print n }' "$1"; }
p99_of() { awk '/^ +99% / { v = $2; u = v; sub(/^[0-9.]+/, "", u); n = v + 0;
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; print n }' "$1"; }
non2xx_of() { awk '/Non-2xx/ { print $NF }' "$1"; }
# cpu_us_per_request TICKS WRK_OUTPUT
cpu_us_per_request() {
    awk -v t="$1" -v hz="$CLK_TCK" '/ requests in / { r = $1 } END { printf "%.1f", t * 1e6 / hz / r }' "$2"
}
med_of() { tr ' ' '\n' <<<"$1" | awk NF | median; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for s in get post; do for n in "${TARGETS[@]}"; do run_wrk "$n" "$s" "$WARMUP" "$TMP/warmup-$n-$s.txt"; done; done
declare -A RPS P50 P99 CPU
for ((r = 1; r <= ROUNDS; r++)); do
    order=("${TARGETS[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[$i]}"); done
    fi
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
            P50[$n-$s]+="$(p50_of "$f") "
            P99[$n-$s]+="$(p99_of "$f") "
            log "round $r $s $n: $(rps_of "$f") req/s, $(cpu_us_per_request $((t1 - t0)) "$f") CPU µs/request"
        done
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

echo "Portcullis (WAF on, PL1) vs nginx + ModSecurity $MODSEC_VERSION + OWASP CRS $CRS_VERSION (PL1, blocking), benign traffic."
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, medians; proxy on core $PROXY_CPU (nginx: 1 worker), wrk + upstream on core $LOAD_CPU; load average $LOAD_START at start, $LOAD_END at end."
echo
echo "| scenario | target | req/s | p50 ms | p99 ms | CPU µs/request |"
echo "|---|---|---|---|---|---|"
for s in get post; do
    label=$([[ $s == get ]] && echo "GET, 4 query args" || echo "POST, 1 KiB JSON")
    for n in "${TARGETS[@]}"; do
        echo "| $label | $n | $(med_of "${RPS[$n-$s]}") | $(med_of "${P50[$n-$s]}") | $(med_of "${P99[$n-$s]}") | $(med_of "${CPU[$n-$s]}") |"
    done
done
echo
echo "| scenario | portcullis / modsec throughput | by CPU per request | target |"
echo "|---|---|---|---|"
for s in get post; do
    label=$([[ $s == get ]] && echo "GET, 4 query args" || echo "POST, 1 KiB JSON")
    ratio=$(awk -v a="$(med_of "${RPS[portcullis-$s]}")" -v b="$(med_of "${RPS[modsec-$s]}")" 'BEGIN { printf "%.1f", a / b }')
    cpu_ratio=$(awk -v a="$(med_of "${CPU[modsec-$s]}")" -v b="$(med_of "${CPU[portcullis-$s]}")" 'BEGIN { printf "%.1f", a / b }')
    verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 30) ? "met" : "MISSED" }')
    echo "| $label | ×$ratio | ×$cpu_ratio | ≥ 30 ($verdict on throughput) |"
done
