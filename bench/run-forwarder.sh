#!/usr/bin/env bash
# Issue #2's yardstick: how far this 2-core rig can show a proxy beating nginx. Three proxies
# in front of the same nginx upstream (`return 200 "ok\n"`), each pinned to PROXY_CPU, wrk and
# the upstream on LOAD_CPU (as bench/run-http.sh):
#   nginx        proxy_pass with upstream keep-alive
#   portcullis   one ApiRoute
#   forwarder    bench/src/bin/forwarder.rs: the least a tokio HTTP/1.1 proxy can do
# For each run: throughput, the proxy's CPU per request (utime+stime from /proc) and how idle
# each core was. When the proxy core has idle time left while the load core has none, the
# load side, not the proxy, sets the throughput.
#
#   ROUNDS=3 DURATION=6s bench/run-forwarder.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
require_tools "apt-get install nginx wrk curl" nginx wrk curl
(cd "$ROOT" && cargo build --release -p portcullis-proxy -p portcullis-bench --bin portcullis-proxy --bin forwarder >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
die() { printf '[bench-fwd] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"

make_tmp portcullis-fwd

UP=$(free_port) NP=$(free_port) PP=$(free_port) AP=$(free_port) FP=$(free_port)
write_upstream_conf "$TMP/upstream" "$UP"
write_proxy_conf "$TMP/nginx" "$NP" "$UP" off
start_nginx upstream "$TMP/upstream" "$LOAD_CPU"
start_nginx "nginx proxy" "$TMP/nginx" "$PROXY_CPU"
NGINX_PID=$LAST_PID
mkdir -p "$TMP/m"
cat >"$TMP/m/route.yaml" <<YAML
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: bench}
spec:
  paths: [{value: /}]
  upstream: {targets: [{url: "http://127.0.0.1:$UP"}]}
YAML
taskset -c "$PROXY_CPU" "$TARGET_DIR/release/portcullis-proxy" --manifests "$TMP/m" \
    --listen "127.0.0.1:$PP" --admin-listen "127.0.0.1:$AP" --no-audit --workers 1 \
    >/dev/null 2>"$TMP/portcullis.log" &
PORTCULLIS_PID=$!
PIDS+=("$PORTCULLIS_PID")
taskset -c "$PROXY_CPU" "$TARGET_DIR/release/forwarder" "127.0.0.1:$FP" "127.0.0.1:$UP" \
    2>"$TMP/forwarder.log" &
FORWARDER_PID=$!
PIDS+=("$FORWARDER_PID")
for port in $NP $PP $FP; do
    for _ in $(seq 1 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/") == 200 ]] && continue 2
        sleep 0.1
    done
    die "proxy on port $port did not answer"
done

idle() { awk -v c="cpu$1" '$1 == c { print $5 }' /proc/stat; }
printf '%-5s %-10s %9s %13s %15s %14s\n' round proxy req/s "CPU µs/req" "proxy idle %" "load idle %"
for round in $(seq 1 "$ROUNDS"); do
    for t in "nginx:$NP:$NGINX_PID" "portcullis:$PP:$PORTCULLIS_PID" "forwarder:$FP:$FORWARDER_PID"; do
        IFS=: read -r name port pid <<<"$t"
        taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
        t0=$(proc_ticks "$pid") p0=$(idle "$PROXY_CPU") l0=$(idle "$LOAD_CPU") s0=$(now)
        taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:$port/" >"$TMP/wrk.txt" 2>&1
        t1=$(proc_ticks "$pid") p1=$(idle "$PROXY_CPU") l1=$(idle "$LOAD_CPU") s1=$(now)
        awk -v round="$round" -v name="$name" -v hz="$CLK_TCK" -v t=$((t1 - t0)) -v p=$((p1 - p0)) \
            -v l=$((l1 - l0)) -v secs="$(awk -v a="$s0" -v b="$s1" 'BEGIN {print b - a}')" '
            /requests in/ { reqs = $1 } /Requests\/sec/ { rps = $2 }
            END { printf "%-5s %-10s %9.0f %13.2f %15.1f %14.1f\n", round, name, rps,
                  t * 1e6 / hz / reqs, 100 * p / hz / secs, 100 * l / hz / secs }' "$TMP/wrk.txt"
    done
done
