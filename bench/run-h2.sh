#!/usr/bin/env bash
# HTTP/2 against HTTP/1.1 through Portcullis, per proxy core (issue #23, target 4: HTTP/2's
# per-core rate within 0.9x of HTTP/1.1's for the same requests). One client for all
# scenarios, h2load, so that the load side is alike; the same GET to one route proxied to a
# plain nginx upstream (`return 200 "ok\n"`, HTTP/1.1 keep-alive), and:
#   h1       HTTP/1.1 over TCP, CONNECTIONS connections
#   h2c      HTTP/2 prior knowledge over TCP, H2_CONNECTIONS connections x STREAMS streams
#   tls-h1   HTTP/1.1 over TLS (ALPN http/1.1), CONNECTIONS connections
#   tls-h2   HTTP/2 over TLS (ALPN h2), H2_CONNECTIONS x STREAMS
# The proxy runs one worker pinned to PROXY_CPU, h2load and the upstream on LOAD_CPU. Rounds
# interleave the scenarios (the order rotates); per scenario the median of the proxy's
# requests per CPU second (utime + stime from /proc) and the ratios h2c/h1 and tls-h2/tls-h1
# are printed and written to RESULTS_DIR/h2-STAMP.jsonl.
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 H2_CONNECTIONS=4 STREAMS=16 PROXY_CPU=0 LOAD_CPU=1
#   PORTCULLIS_BIN=<repo>/target/release/portcullis-proxy  RESULTS_DIR=<repo>/bench/results
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
H2_CONNECTIONS=${H2_CONNECTIONS:-4}
STREAMS=${STREAMS:-16}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
SCENARIOS=(h1 h2c tls-h1 tls-h2)
log() { printf '[h2] %s\n' "$*" >&2; }
die() { printf '[h2] error: %s\n' "$*" >&2; exit 1; }

require_tools "Debian: apt-get install nginx nghttp2-client curl openssl util-linux" \
    nginx h2load curl openssl taskset
[[ -x $PORTCULLIS_BIN ]] || (cd "$ROOT" && cargo build --release --locked -p portcullis-proxy --bin portcullis-proxy >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"
CLK_TCK=$(getconf CLK_TCK)

make_tmp portcullis-h2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null
UP=$(free_port); PLAIN=$(free_port); TLS=$(free_port); ADMIN=$(free_port)
write_upstream_conf "$TMP/upstream" "$UP"
start_nginx upstream "$TMP/upstream" "$LOAD_CPU"

tls_bench_manifests "$TMP/manifests" "$TMP/tls.crt" "$TMP/tls.key" "$UP"
taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$TMP/manifests" --workers 1 --no-audit \
    --listen "127.0.0.1:$PLAIN" --tls-listen "127.0.0.1:$TLS" --admin-listen "127.0.0.1:$ADMIN" \
    >/dev/null 2>"$TMP/portcullis.log" &
PC_PID=$!
PIDS+=("$PC_PID")
for _ in $(seq 1 300); do
    [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 --resolve "bench.test:$TLS:127.0.0.1" "https://bench.test:$TLS/" || true) == 200 ]] && break
    sleep 0.1
done

load() { # scenario duration outfile
    local args=(-D "$2" --connect-to="127.0.0.1")
    case $1 in
        h1) args+=(--h1 -c "$CONNECTIONS" "http://bench.test:$PLAIN/") ;;
        h2c) args+=(-c "$H2_CONNECTIONS" -m "$STREAMS" "http://bench.test:$PLAIN/") ;;
        tls-h1) args+=(--h1 -c "$CONNECTIONS" "https://bench.test:$TLS/") ;;
        tls-h2) args+=(-c "$H2_CONNECTIONS" -m "$STREAMS" "https://bench.test:$TLS/") ;;
    esac
    taskset -c "$LOAD_CPU" h2load "${args[@]}" >"$3" 2>&1 || true
}
# Each scenario must really speak what it says, and answer 200.
for s in "${SCENARIOS[@]}"; do
    load "$s" 1s "$TMP/check-$s.txt"
    proto=$(awk '/^Application protocol:/ { print $3 }' "$TMP/check-$s.txt")
    case $s in h1 | tls-h1) want=http/1.1 ;; h2c) want=h2c ;; *) want=h2 ;; esac
    [[ $proto == "$want" ]] || die "$s negotiated '${proto:-nothing}', expected $want: $(tail -3 "$TMP/check-$s.txt")"
    grep -q "status codes: [1-9][0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$TMP/check-$s.txt" ||
        die "$s: not every answer was 200: $(grep 'status codes' "$TMP/check-$s.txt")"
done

mkdir -p "$RESULTS_DIR"
OUT="$RESULTS_DIR/h2-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$OUT"
NS=${#SCENARIOS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < NS; k++)); do
        s=${SCENARIOS[(r + k) % NS]}
        t0=$(proc_ticks "$PC_PID")
        load "$s" "$DURATION" "$TMP/run.txt"
        t1=$(proc_ticks "$PC_PID")
        done_=$(awk '/^requests:/ { print $8 }' "$TMP/run.txt")
        ok=$(awk '/^status codes:/ { print $3 }' "$TMP/run.txt")
        rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$TMP/run.txt")
        [[ ${done_:-0} -gt 0 && ${ok:-0} == "${done_:-0}" ]] || die "$s round $((r + 1)): $(grep -E '^(requests|status codes):' "$TMP/run.txt" | tr '\n' ' ')"
        per_core=$(awk -v n="$ok" -v d="$((t1 - t0))" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (d > 0 ? n * hz / d : 0) }')
        printf '{"type":"run","round":%d,"scenario":"%s","requests":%d,"rps":%s,"rps_per_proxy_cpu":%s,"loadavg":"%s"}\n' \
            $((r + 1)) "$s" "$ok" "${rps:-0}" "$per_core" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
        log "round $((r + 1)) $s: ${rps:-0} req/s, $per_core req/s per proxy core"
    done
done

med_of() { grep "\"scenario\":\"$1\"" "$OUT" | sed 's/.*"rps_per_proxy_cpu":\([0-9.]*\).*/\1/' | median; }
echo
echo "| scenario | req/s per proxy core (median of $ROUNDS) |"
echo "|---|---:|"
declare -A M
for s in "${SCENARIOS[@]}"; do
    M[$s]=$(med_of "$s")
    printf '| %s | %.0f |\n' "$s" "${M[$s]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
h2c=$(ratio "${M[h2c]}" "${M[h1]}")
tls=$(ratio "${M[tls-h2]}" "${M[tls-h1]}")
echo
echo "HTTP/2 / HTTP/1.1 per proxy core: prior knowledge ×$h2c, over TLS ×$tls (target ≥ ×0.9)."
printf '{"type":"summary","h2c_vs_h1":%s,"tls_h2_vs_tls_h1":%s}\n' "$h2c" "$tls" >>"$OUT"
echo "Raw results: ${OUT#"$ROOT"/}"
