#!/usr/bin/env bash
# HTTP/1.1 plain-routing benchmark: wrk against
#   direct      the upstream itself (nginx #1, `return 200 "ok\n"`)
#   nginx       nginx #2 `proxy_pass` to the upstream with upstream keep-alive
#   haproxy     HAProxy (one thread) to the upstream with server-side keep-alive
#               (`http-reuse always`)
#   portcullis  portcullis-proxy routing `/` to the upstream (one ApiRoute)
# Each proxy is pinned to PROXY_CPU, wrk and the upstream to LOAD_CPU. Rounds are
# interleaved (the target order rotates every round); we report medians per target and the
# Portcullis/nginx ratios measured in the same run. See bench/README.md for the method.
#
# Environment (all optional):
#   ROUNDS=5 DURATION=10s CONNECTIONS=64 THREADS=1 WARMUP=2s
#   PROXY_CPU=0 LOAD_CPU=1
#   PORTCULLIS_BIN=<repo>/target/release/portcullis-proxy (built with cargo if missing)
#   PORTCULLIS_EXTRA_ARGS="..."   extra flags for portcullis-proxy
#   SKIP_PORTCULLIS=1             run only direct + nginx (binary not needed)
#   AUDIT=auto|off|on             access/audit logging for both proxies (see README)
#   RESULTS_DIR=<repo>/bench/results   KEEP_TMP=1 (keep generated configs and logs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_PORTCULLIS=${SKIP_PORTCULLIS:-0}
AUDIT=${AUDIT:-auto}
PORTCULLIS_EXTRA_ARGS=${PORTCULLIS_EXTRA_ARGS:-}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
KEEP_TMP=${KEEP_TMP:-0}
DEFAULT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy"
PORTCULLIS_BIN=${PORTCULLIS_BIN:-}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
case $AUDIT in auto|on|off) ;; *) die "AUDIT must be auto, on or off (got '$AUDIT')" ;; esac

# ---------------------------------------------------------------------------- tools
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi; }

ensure_tools() {
    local missing=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} (apt-get)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    WRK=$(command -v wrk)
}

# ---------------------------------------------------------------------------- processes
TMP=""
PIDS=()
WRK_PID=""
OUT=""
cleanup() {
    local rc=$? pid kids i
    trap - EXIT INT TERM
    if [[ -n $WRK_PID ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -0 "$pid" 2>/dev/null || continue
        kids=$(pgrep -P "$pid" || true)
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        # shellcheck disable=SC2086  # word splitting of the pid list is intended
        kill -KILL "$pid" $kids 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # An unfinished run leaves no results file behind (it would have no summary line).
    [[ -n $OUT && -f $OUT.partial ]] && { rm -f "$OUT.partial"; log "interrupted: no results written"; }
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 || $rc -eq 1 ]]; then log "kept $TMP (configs and logs)"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=" "
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port VAR: a free loopback port below the ephemeral range, so that wrk's and the
# proxies' outgoing connections cannot collide with it.
pick_port() {
    local p
    for _ in $(seq 1 500); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        port_busy "$p" && continue
        USED_PORTS+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free loopback port found"
}

# wait_ok URL PID NAME LOGFILE: poll until URL answers 200 (≤ 30 s), failing fast if PID dies.
wait_ok() {
    local url=$1 pid=$2 name=$3 logf=$4 code
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up; last lines of $logf:"
            tail -n 20 "$logf" >&2 || true
            die "$name failed to start"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.05
    done
    tail -n 20 "$logf" >&2 || true
    die "$name not ready at $url after 30 s (last status '$code')"
}

# expect_body URL NAME: the proxied path must return the upstream's body.
expect_body() {
    local body
    body=$(curl -s --max-time 2 "$1" || true)
    [[ $body == "ok" ]] || die "$2: $1 returned '$body', expected the upstream's 'ok'"
}

# ---------------------------------------------------------------------------- measurement
# parse_wrk FILE -> "rps p50_ms p75_ms p90_ms p99_ms requests non2xx sock_errors"
parse_wrk() {
    awk '
    function ms(v,  n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s")  return n * 1000
        if (u == "m")  return n * 60000
        if (u == "h")  return n * 3600000
        return -1
    }
    /^ +50% / { p50 = ms($2) } /^ +75% / { p75 = ms($2) }
    /^ +90% / { p90 = ms($2) } /^ +99% / { p99 = ms($2) }
    / requests in / { req = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); err = $4 + $6 + $8 + $10 }
    /^Requests\/sec:/ { rps = $2 }
    END {
        if (rps == "" || p99 == "") exit 1
        printf "%s %.4f %.4f %.4f %.4f %d %d %d\n", rps, p50, p75, p90, p99, req, non2xx + 0, err + 0
    }' "$1"
}

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "${s//$'\t'/ }"; }

minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'; }

# ---------------------------------------------------------------------------- set-up
ensure_tools
NCPU=$(nproc)
if ((NCPU < 2)); then
    log "warning: only $NCPU CPU visible; proxy and load generator share it"
    PROXY_CPU=0 LOAD_CPU=0
fi

TARGETS=(direct nginx portcullis)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[[ -x $HAPROXY ]] && TARGETS=(direct nginx haproxy portcullis)
PORTCULLIS_AUDIT="n/a"
HELP=""
if [[ $SKIP_PORTCULLIS == 1 ]]; then
    TARGETS=(direct nginx)
    log "SKIP_PORTCULLIS=1: benchmarking direct and nginx only; no Portcullis numbers or ratio"
else
    if [[ -z $PORTCULLIS_BIN ]]; then
        PORTCULLIS_BIN=$DEFAULT_BIN
        if [[ ! -x $PORTCULLIS_BIN ]]; then
            log "$PORTCULLIS_BIN missing: cargo build --release -p portcullis-proxy"
            (cd "$ROOT" && cargo build --release -p portcullis-proxy) ||
                die "build failed; fix it, point PORTCULLIS_BIN at a binary, or set SKIP_PORTCULLIS=1"
        fi
    fi
    [[ -x $PORTCULLIS_BIN ]] || die "no executable portcullis-proxy at $PORTCULLIS_BIN (does the crate have a binary target yet?); set PORTCULLIS_BIN or SKIP_PORTCULLIS=1"
    HELP=$("$PORTCULLIS_BIN" --help 2>&1 || true)
fi

# Audit logging: nginx has no access log in the plain configuration. Keep both proxies alike:
# off when Portcullis can turn its audit log off, otherwise both on (Portcullis' stdout and
# nginx' JSON access log both written to /dev/null).
PORTCULLIS_AUDIT_ARGS=()
has_flag() { grep -q -- "$1\b" <<<"$HELP"; }
if [[ $SKIP_PORTCULLIS == 1 ]]; then
    [[ $AUDIT == auto ]] && AUDIT=off
elif has_flag --no-audit; then
    [[ $AUDIT == auto ]] && AUDIT=off
    if [[ $AUDIT == off ]]; then PORTCULLIS_AUDIT_ARGS=(--no-audit); PORTCULLIS_AUDIT="off (--no-audit)"
    else PORTCULLIS_AUDIT="on (stdout -> /dev/null)"; fi
else
    if [[ $AUDIT == off ]]; then
        log "warning: AUDIT=off but portcullis-proxy has no --no-audit flag; its audit log stays on (stdout -> /dev/null) while nginx logs nothing"
    fi
    [[ $AUDIT == auto ]] && AUDIT=on
    PORTCULLIS_AUDIT="on (stdout -> /dev/null)"
fi
WORKERS_ARGS=(--workers 1)
if [[ $SKIP_PORTCULLIS != 1 ]] && ! has_flag --workers; then
    log "warning: portcullis-proxy --help does not list --workers; relying on the CPU affinity (1 core) to size its runtime"
    WORKERS_ARGS=()
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers run as an unprivileged user when we are root
pick_port UP_PORT
pick_port NGX_PORT
write_upstream_conf "$TMP/upstream" "$UP_PORT"
write_proxy_conf "$TMP/nginx" "$NGX_PORT" "$UP_PORT" "$AUDIT"

declare -A URL PID
URL[direct]="http://127.0.0.1:$UP_PORT/"
URL[nginx]="http://127.0.0.1:$NGX_PORT/"

start_nginx upstream "$TMP/upstream" "$LOAD_CPU"
PID[direct]=$LAST_PID
wait_ok "${URL[direct]}" "${PID[direct]}" "upstream nginx" "$TMP/upstream/error.log"
expect_body "${URL[direct]}" "upstream"
UP_PID=${PID[direct]}

start_nginx "nginx proxy" "$TMP/nginx" "$PROXY_CPU"
PID[nginx]=$LAST_PID
wait_ok "${URL[nginx]}" "${PID[nginx]}" "nginx proxy" "$TMP/nginx/error.log"
expect_body "${URL[nginx]}" "nginx proxy"

if [[ " ${TARGETS[*]} " == *" haproxy "* ]]; then
    pick_port HA_PORT
    mkdir -p "$TMP/haproxy"
    # One thread on the proxy core, like the other proxies; no logging, like nginx's plain
    # configuration; keep-alive to the upstream shared between client connections.
    cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:$HA_PORT
    default_backend upstream
backend upstream
    server up 127.0.0.1:$UP_PORT maxconn 1000
EOF
    taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$TMP/haproxy/haproxy.cfg" \
        >/dev/null 2>"$TMP/haproxy/stderr.log" &
    PID[haproxy]=$!
    PIDS+=("${PID[haproxy]}")
    URL[haproxy]="http://127.0.0.1:$HA_PORT/"
    wait_ok "${URL[haproxy]}" "${PID[haproxy]}" "haproxy" "$TMP/haproxy/stderr.log"
    expect_body "${URL[haproxy]}" "haproxy"
fi

if [[ $SKIP_PORTCULLIS != 1 ]]; then
    pick_port PC_PORT
    pick_port PC_ADMIN
    mkdir -p "$TMP/portcullis/manifests"
    cat >"$TMP/portcullis/manifests/bench.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream:
    targets: [{url: "http://127.0.0.1:$UP_PORT"}]
  securityHeaders: false
EOF
    # shellcheck disable=SC2086  # PORTCULLIS_EXTRA_ARGS is a word list on purpose
    taskset -c "$PROXY_CPU" "$PORTCULLIS_BIN" --manifests "$TMP/portcullis/manifests" \
        --listen "127.0.0.1:$PC_PORT" --admin-listen "127.0.0.1:$PC_ADMIN" \
        "${WORKERS_ARGS[@]}" "${PORTCULLIS_AUDIT_ARGS[@]}" $PORTCULLIS_EXTRA_ARGS \
        >/dev/null 2>"$TMP/portcullis/stderr.log" &
    PID[portcullis]=$!
    PIDS+=("${PID[portcullis]}")
    URL[portcullis]="http://127.0.0.1:$PC_PORT/"
    wait_ok "http://127.0.0.1:$PC_ADMIN/readyz" "${PID[portcullis]}" portcullis "$TMP/portcullis/stderr.log"
    wait_ok "${URL[portcullis]}" "${PID[portcullis]}" portcullis "$TMP/portcullis/stderr.log"
    expect_body "${URL[portcullis]}" portcullis
fi

# ---------------------------------------------------------------------------- results file
mkdir -p "$RESULTS_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$RESULTS_DIR/http-$STAMP.jsonl"
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=false
[[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null || true) ]] && GIT_DIRTY=true
{
    printf '{"type":"meta","timestamp":%s,"git":%s,"git_dirty":%s,' \
        "$(json_str "$STAMP")" "$(json_str "$GIT_REV")" "$GIT_DIRTY"
    printf '"cpus":%d,"cpu_model":%s,"kernel":%s,"nginx":%s,"wrk":%s,' "$NCPU" \
        "$(json_str "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)")" \
        "$(json_str "$(uname -r)")" "$(json_str "$("$NGINX" -v 2>&1 | sed 's/.*: //')")" \
        "$(json_str "$("$WRK" --version 2>&1 | head -n1 | awk '{print $2}')")"
    printf '"portcullis_bin":%s,"targets":%s,"rounds":%d,"duration":%s,"connections":%d,"threads":%d,' \
        "$(json_str "${PORTCULLIS_BIN:-}")" "$(json_str "${TARGETS[*]}")" "$ROUNDS" \
        "$(json_str "$DURATION")" "$CONNECTIONS" "$THREADS"
    printf '"proxy_cpu":%d,"load_cpu":%d,"audit_log":%s,"portcullis_audit":%s,"loadavg_start":%s}\n' \
        "$PROXY_CPU" "$LOAD_CPU" "$(json_str "$AUDIT")" "$(json_str "$PORTCULLIS_AUDIT")" \
        "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")"
} >"$OUT.partial"

# ---------------------------------------------------------------------------- runs
# wrk runs in the background and we `wait` for it, so that a signal to this script is handled
# at once (bash defers traps until a foreground child exits) and cleanup can stop wrk too.
run_wrk() { # target duration outfile
    local rc=0
    taskset -c "$LOAD_CPU" "$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "${URL[$1]}" >"$3" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    ((rc == 0)) || { cat "$3" >&2; die "wrk failed against $1 (exit $rc)"; }
}

if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    for t in "${TARGETS[@]}"; do
        log "warm-up $t ($WARMUP)"
        run_wrk "$t" "$WARMUP" "$TMP/warmup-$t.txt"
    done
fi

# The shell's reaped-children CPU (cutime + cstime): its delta around a wrk run (reaped by
# `wait`) is wrk's own CPU time.
child_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }
pct() { awk -v d="$1" -v hz="$CLK_TCK" -v w="$2" 'BEGIN { v = 100 * d / hz / w; printf "%.1f", (v < 0 ? 0 : v) }'; }

declare -A RPS P50 P99 PCPU EFF NOISE_P NOISE_L
NT=${#TARGETS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < NT; k++)); do
        t=${TARGETS[(r + k) % NT]}
        f="$TMP/wrk-r$r-$t.txt"
        proxy_pid=""
        [[ $t != direct ]] && proxy_pid=${PID[$t]}
        p0=0; [[ -n $proxy_pid ]] && p0=$(proc_ticks "$proxy_pid")
        u0=$(proc_ticks "$UP_PID")
        read -r c0b c0t < <(core_ticks "$PROXY_CPU")
        read -r c1b c1t < <(core_ticks "$LOAD_CPU")
        k0=$(child_ticks)
        w0=$(now)
        run_wrk "$t" "$DURATION" "$f"
        w1=$(now)
        k1=$(child_ticks)
        p1=0; [[ -n $proxy_pid ]] && p1=$(proc_ticks "$proxy_pid")
        u1=$(proc_ticks "$UP_PID")
        read -r c0b2 c0t2 < <(core_ticks "$PROXY_CPU")
        read -r c1b2 c1t2 < <(core_ticks "$LOAD_CPU")
        kill -0 "${PID[direct]}" 2>/dev/null || die "upstream died during the $t run"
        [[ -z $proxy_pid ]] || kill -0 "$proxy_pid" 2>/dev/null || die "$t died during its run"

        parsed=$(parse_wrk "$f") || { cat "$f" >&2; die "could not parse wrk output for $t"; }
        read -r rps p50 p75 p90 p99 reqs non2xx errs <<<"$parsed"
        wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')
        pcpu=null eff=null
        if [[ -n $proxy_pid ]]; then
            pcpu=$(pct $((p1 - p0)) "$wall")
            eff=$(awk -v r="$rps" -v c="$pcpu" 'BEGIN { printf "%.0f", (c > 0 ? r / (c / 100) : 0) }')
        fi
        ucpu=$(pct $((u1 - u0)) "$wall")
        wcpu=$(pct $((k1 - k0)) "$wall")
        core0=$(awk -v b=$((c0b2 - c0b)) -v t=$((c0t2 - c0t)) 'BEGIN { printf "%.1f", t ? 100 * b / t : 0 }')
        core1=$(awk -v b=$((c1b2 - c1b)) -v t=$((c1t2 - c1t)) 'BEGIN { printf "%.1f", t ? 100 * b / t : 0 }')
        # CPU used on each core by processes that are not part of the benchmark (other builds).
        noise_p=$(awk -v b="$core0" -v c="${pcpu/null/0}" 'BEGIN { v = b - c; printf "%.1f", (v < 0 ? 0 : v) }')
        noise_l=$(awk -v b="$core1" -v u="$ucpu" -v w="$wcpu" 'BEGIN { v = b - u - w; printf "%.1f", (v < 0 ? 0 : v) }')

        RPS[$t]+="$rps "; P50[$t]+="$p50 "; P99[$t]+="$p99 "
        NOISE_P[$t]+="$noise_p "; NOISE_L[$t]+="$noise_l "
        [[ $pcpu != null ]] && { PCPU[$t]+="$pcpu "; EFF[$t]+="$eff "; }
        printf '{"type":"run","round":%d,"position":%d,"target":%s,"rps":%s,"p50_ms":%s,"p75_ms":%s,"p90_ms":%s,"p99_ms":%s,"requests":%d,"non_2xx":%d,"socket_errors":%d,"wall_s":%.2f,"proxy_cpu_pct":%s,"rps_per_proxy_cpu":%s,"upstream_cpu_pct":%s,"wrk_cpu_pct":%s,"proxy_core_busy_pct":%s,"load_core_busy_pct":%s,"proxy_core_other_pct":%s,"load_core_other_pct":%s,"loadavg":%s}\n' \
            $((r + 1)) $((k + 1)) "$(json_str "$t")" "$rps" "$p50" "$p75" "$p90" "$p99" "$reqs" \
            "$non2xx" "$errs" "$wall" "$pcpu" "$eff" "$ucpu" "$wcpu" "$core0" "$core1" "$noise_p" "$noise_l" \
            "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")" >>"$OUT.partial"
        log "$(printf 'round %d/%d %-10s %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  proxy cpu %5s%%  other load: core%d %5s%%, core%d %5s%%' \
            $((r + 1)) "$ROUNDS" "$t" "$rps" "$p50" "$p99" "${pcpu/null/-}" "$PROXY_CPU" "$noise_p" "$LOAD_CPU" "$noise_l")"
        if ((non2xx > 0 || errs > 0)); then
            log "warning: $t round $((r + 1)): $non2xx non-2xx responses, $errs socket errors (details in $OUT)"
        fi
    done
done

# ---------------------------------------------------------------------------- summary
med() { tr ' ' '\n' <<<"$1" | awk NF | median; }
declare -A M_RPS M_P50 M_P99 M_PCPU M_EFF M_NP M_NL RANGE
for t in "${TARGETS[@]}"; do
    M_RPS[$t]=$(med "${RPS[$t]}"); M_P50[$t]=$(med "${P50[$t]}"); M_P99[$t]=$(med "${P99[$t]}")
    M_NP[$t]=$(med "${NOISE_P[$t]}"); M_NL[$t]=$(med "${NOISE_L[$t]}")
    M_PCPU[$t]=""; M_EFF[$t]=""
    if [[ -n ${PCPU[$t]:-} ]]; then M_PCPU[$t]=$(med "${PCPU[$t]}"); M_EFF[$t]=$(med "${EFF[$t]}"); fi
    RANGE[$t]=$(tr ' ' '\n' <<<"${RPS[$t]}" | awk NF | minmax)
done
# Noise that matters: other work on the proxy core while a proxy ran, and on the load core.
NP_PROXIES=""
for t in "${TARGETS[@]}"; do [[ $t == direct ]] || NP_PROXIES+="${NOISE_P[$t]} "; done
ALL_NP=$(med "$NP_PROXIES")
ALL_NL=$(med "${NOISE_L[*]}")

echo
echo "HTTP/1.1 plain routing, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds, medians."
printf '%s\n' "Proxies pinned to core $PROXY_CPU; wrk + upstream (nginx, \`return 200 \"ok\\n\"\`) on core $LOAD_CPU. Audit/access log: $AUDIT$([[ $SKIP_PORTCULLIS == 1 ]] || echo " (Portcullis: $PORTCULLIS_AUDIT)")."
echo
echo "| target | req/s (median) | req/s (min–max) | p50 ms | p99 ms | proxy CPU % | req/s per proxy core | other load, core $PROXY_CPU / $LOAD_CPU % |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
    # The proxy core's other load is irrelevant for `direct` (nothing of ours runs there).
    printf '| %s | %.0f | %s | %.2f | %.2f | %s | %s | %s / %.0f |\n' "$t" "${M_RPS[$t]}" "${RANGE[$t]}" \
        "${M_P50[$t]}" "${M_P99[$t]}" \
        "$([[ -n ${M_PCPU[$t]} ]] && printf '%.0f' "${M_PCPU[$t]}" || echo –)" \
        "$([[ -n ${M_EFF[$t]} ]] && printf '%.0f' "${M_EFF[$t]}" || echo –)" \
        "$([[ $t == direct ]] && echo – || printf '%.0f' "${M_NP[$t]}")" "${M_NL[$t]}"
done

SUMMARY="\"medians\":{"
sep=""
for t in "${TARGETS[@]}"; do
    SUMMARY+="$sep\"$t\":{\"rps\":${M_RPS[$t]},\"p50_ms\":${M_P50[$t]},\"p99_ms\":${M_P99[$t]},\"proxy_cpu_pct\":${M_PCPU[$t]:-null},\"rps_per_proxy_cpu\":${M_EFF[$t]:-null},\"proxy_core_other_pct\":${M_NP[$t]},\"load_core_other_pct\":${M_NL[$t]}}"
    sep=","
done
SUMMARY+="}"

paired() { # metric-list-a metric-list-b -> median of per-round a/b
    paste -d' ' <(tr ' ' '\n' <<<"$1" | awk NF) <(tr ' ' '\n' <<<"$2" | awk NF) |
        awk '$2 > 0 { print $1 / $2 }' | median
}
if [[ $SKIP_PORTCULLIS != 1 ]]; then
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
    ratio_rps=$(ratio "${M_RPS[portcullis]}" "${M_RPS[nginx]}")
    ratio_p99=$(ratio "${M_P99[portcullis]}" "${M_P99[nginx]}")
    ratio_eff=$(ratio "${M_EFF[portcullis]}" "${M_EFF[nginx]}")
    # Paired ratios: the two proxies measured in the same round, then the median of those.
    paired_rps=$(paired "${RPS[portcullis]}" "${RPS[nginx]}")
    paired_p99=$(paired "${P99[portcullis]}" "${P99[nginx]}")
    verdict=FAIL
    # Issue #23's form of the target: per proxy core (CPU per request ≤ 0.91× nginx's), since
    # on two cores the load core saturates before either proxy does.
    awk -v r="$ratio_eff" -v p="$ratio_p99" 'BEGIN { exit !(r >= 1.1 && p <= 1.0) }' && verdict=PASS
    echo
    printf '**Portcullis / nginx**: throughput ×%.2f, p99 ×%.2f, req/s per proxy core ×%.2f (ratios of medians); per-round paired medians: throughput ×%.2f, p99 ×%.2f.\n' \
        "$ratio_rps" "$ratio_p99" "$ratio_eff" "$paired_rps" "$paired_p99"
    echo "Target (req/s per proxy core ≥ 1.1× nginx, p99 no worse): **$verdict**"
    SUMMARY+=",\"ratio_portcullis_nginx\":{\"rps\":$ratio_rps,\"p99\":$ratio_p99,\"rps_per_proxy_cpu\":$ratio_eff,\"paired_rps\":$paired_rps,\"paired_p99\":$paired_p99},\"target_met\":$([[ $verdict == PASS ]] && echo true || echo false)"
    if [[ -n ${M_EFF[haproxy]:-} ]]; then
        ha_eff=$(ratio "${M_EFF[portcullis]}" "${M_EFF[haproxy]}")
        ha_p99=$(ratio "${M_P99[portcullis]}" "${M_P99[haproxy]}")
        printf '**Portcullis / HAProxy**: req/s per proxy core ×%.2f, p99 ×%.2f.\n' "$ha_eff" "$ha_p99"
        SUMMARY+=",\"ratio_portcullis_haproxy\":{\"rps_per_proxy_cpu\":$ha_eff,\"p99\":$ha_p99}"
    fi
fi
printf '{"type":"summary",%s}\n' "$SUMMARY" >>"$OUT.partial"
mv "$OUT.partial" "$OUT"

noisy=$(awk -v a="$ALL_NP" -v b="$ALL_NL" 'BEGIN { v = (a > 10 || b > 10); print v }')
if ((noisy)); then
    echo
    echo "**Noisy run**: processes outside the benchmark used a median ${ALL_NP}% of core $PROXY_CPU (while a proxy ran there) and ${ALL_NL}% of core $LOAD_CPU during the measurements. Treat absolute numbers and ratios as indicative only; rerun on a quiet machine (the per-core figures are in the JSON lines)."
fi
for t in nginx haproxy portcullis; do
    [[ -n ${M_PCPU[$t]:-} ]] || continue
    if ((!noisy)) && awk -v c="${M_PCPU[$t]}" 'BEGIN { exit !(c < 85) }'; then
        echo
        echo "Note: the $t proxy used only ${M_PCPU[$t]}% of core $PROXY_CPU, so it was not the bottleneck (core $LOAD_CPU with wrk + upstream was); throughput ratios then understate the difference between the proxies: compare req/s per proxy core."
    fi
done
echo
echo "Raw results: ${OUT#"$ROOT"/}"
