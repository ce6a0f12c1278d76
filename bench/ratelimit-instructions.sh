#!/usr/bin/env bash
# Redis-backed rate limiting, load-independent numbers for a shared machine (companion of
# bench/run-ratelimit.sh, same route and policy: one ClientIp policy whose limit is never
# reached, Redis backend with the default 50 ms timeout, onBackendFailure Deny):
#   1. the proxy under callgrind, Redis native: proxy instructions per request;
#   2. redis-server under callgrind, the proxy native: Redis instructions per decision;
#   3. both native: redis-server CPU per decision (utime+stime from /proc/PID/stat).
# Each run: wrk -t1 -c<C> for DURATION after a 2 s warm-up, counted over the measured run
# only. Every run also reports the requests per EVALSHA (`INFO commandstats`: the average
# batch) and the share of requests answered 503 (a decision that missed its 50 ms
# timeout). The proxy runs one worker pinned to PROXY_CPU; wrk, nginx and Redis to LOAD_CPU.
#
#   bench/ratelimit-instructions.sh                 # CONNS="8 64" REDIS_CONNS=8 DURATION=10s
#   CONNS=64 RUNS="1 3" PORTCULLIS_BIN=... bench/ratelimit-instructions.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CONNS=${CONNS:-8 64}
REDIS_CONNS=${REDIS_CONNS:-8}
RUNS=${RUNS:-1 2 3}
DURATION=${DURATION:-10s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
require_tools "apt-get install valgrind nginx redis-server redis-tools wrk curl" \
    valgrind callgrind_control nginx redis-server redis-cli wrk curl
[[ -x $PORTCULLIS_BIN ]] || (cd "$ROOT" && cargo build --release -p portcullis-proxy >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
die() { printf '[rl-instr] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"

make_tmp portcullis-rl-instr

UP=$(free_port)
write_upstream_conf "$TMP/upstream" "$UP"
start_nginx upstream "$TMP/upstream" "$LOAD_CPU"

start_redis() { # VALGRIND(0/1) -> sets RPID RPORT
    RPORT=$(free_port)
    local pre=()
    [[ $1 == 1 ]] && pre=(valgrind --tool=callgrind "--callgrind-out-file=$TMP/cg-redis.%p.out")
    taskset -c "$LOAD_CPU" "${pre[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
    RPID=$!
    PIDS+=("$RPID")
    for _ in $(seq 1 300); do
        [[ $(redis-cli -p "$RPORT" ping 2>/dev/null) == PONG ]] && return
        sleep 0.1
    done
    echo "redis-server did not start" >&2
    exit 1
}
start_proxy() { # VALGRIND(0/1) -> sets PPID_ PPORT
    mkdir -p "$TMP/m"
    cat >"$TMP/m/bench.yaml" <<YAML
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench, namespace: bench}
spec:
  key: ClientIp
  limits: [{requests: 1000000000, period: 1s}]
  backend: {type: Redis, redis: {url: "redis://127.0.0.1:$RPORT", timeout: 50ms}}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: bench}
spec:
  paths: [{value: /}]
  rateLimitPolicies: [bench]
  upstream: {targets: [{url: "http://127.0.0.1:$UP"}]}
YAML
    PPORT=$(free_port)
    local admin pre=()
    admin=$(free_port)
    [[ $1 == 1 ]] && pre=(valgrind --tool=callgrind "--callgrind-out-file=$TMP/cg-proxy.%p.out")
    taskset -c "$PROXY_CPU" "${pre[@]}" "$PORTCULLIS_BIN" --manifests "$TMP/m" \
        --listen "127.0.0.1:$PPORT" --admin-listen "127.0.0.1:$admin" --no-audit --workers 1 \
        >/dev/null 2>"$TMP/proxy.log" &
    PPID_=$!
    PIDS+=("$PPID_")
    for _ in $(seq 1 600); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PPORT/") == 200 ]] && return
        sleep 0.2
    done
    echo "proxy did not start" >&2
    exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
evalsha() { redis-cli -p "$RPORT" info commandstats | tr -d '\r' |
    awk -F'[=,:]' '/^cmdstat_evalsha:/ { print $3 }' | grep . || echo 0; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
callgrind_total() { # PID PREFIX
    callgrind_control -d "$1" >/dev/null 2>&1
    sleep 1
    local f
    f=$(ls -t "$TMP"/cg-"$2"."$1".out.* | head -1)
    awk '/^(summary|totals):/ { print $2; exit }' "$f"
}
measure() { # RUN CONNS
    local run=$1 c=$2 counted="" e0 e1 t0 t1 reqs non2xx total
    taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d2s "http://127.0.0.1:$PPORT/" >/dev/null 2>&1 || true
    case $run in
        1) callgrind_control -z "$PPID_" >/dev/null 2>&1; counted=$PPID_ ;;
        2) callgrind_control -z "$RPID" >/dev/null 2>&1; counted=$RPID ;;
        3) t0=$(cpu_ticks "$RPID") ;;
    esac
    e0=$(evalsha)
    taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"$DURATION" "http://127.0.0.1:$PPORT/" >"$TMP/wrk.txt" 2>&1 || true
    e1=$(evalsha)
    reqs=$(awk '/requests in/ { print $1 }' "$TMP/wrk.txt")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$TMP/wrk.txt")
    non2xx=${non2xx:-0}
    local line
    line=$(awk -v r="$reqs" -v n="$non2xx" -v e=$((e1 - e0)) 'BEGIN {
        printf "requests %d, 503 %d (%.2f%%), requests per EVALSHA %.2f", r, n, 100 * n / r, r / (e > 0 ? e : 1) }')
    case $run in
        1) total=$(callgrind_total "$counted" proxy)
           echo "c=$c proxy under callgrind: $line; proxy instructions per request $((total / reqs))" ;;
        2) total=$(callgrind_total "$counted" redis)
           echo "c=$c redis under callgrind: $line; redis-server instructions per decision $((total / reqs))" ;;
        3) t1=$(cpu_ticks "$RPID")
           echo "c=$c native: $line; $(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {
               printf "redis-server CPU per decision %.1f us", t * 1e6 / hz / r }')" ;;
    esac
}

for run in $RUNS; do
    for c in $CONNS; do
        # Redis under callgrind serves a few thousand calls a second: at a high concurrency
        # the queue in front of it alone exceeds the 50 ms timeout.
        [[ $run == 2 && " $REDIS_CONNS " != *" $c "* ]] && continue
        start_redis "$([[ $run == 2 ]] && echo 1 || echo 0)"
        start_proxy "$([[ $run == 1 ]] && echo 1 || echo 0)"
        measure "$run" "$c"
        stop "$PPID_"
        stop "$RPID"
    done
done
