# shellcheck shell=bash
# Shell helpers shared by the bench scripts (sourced, not run).

# A loopback TCP port nothing listens on (random in 20000-31999, so that parallel runs
# rarely pick the same one).
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    echo "no free port" >&2
    exit 1
}

# Stops every process in the PIDS array and waits for them (for the scripts' EXIT traps).
stop_pids() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# Makes the script's temporary folder $TMP (named after the first argument), an empty PIDS
# array, and an EXIT trap that stops those processes and removes the folder.
make_tmp() {
    # shellcheck disable=SC2034 # TMP and PIDS are the calling script's
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX") PIDS=()
    trap 'stop_pids; rm -rf "$TMP"' EXIT
}

# Exits unless every tool named after the first argument is on PATH or in /usr/sbin (where
# Debian puts nginx); the first argument is the install hint printed with the missing ones.
require_tools() {
    local hint=$1 tool missing=()
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || { echo "missing: ${missing[*]} ($hint)" >&2; exit 1; }
}

# CPU time from /proc.
# shellcheck disable=SC2034 # used by the scripts that source this
CLK_TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }
# proc_ticks PID: utime+stime of a process and its direct children (nginx master + worker).
proc_ticks() {
    local total=0 p t
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
# core_ticks CPU: "busy total" jiffies of one core from /proc/stat.
core_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i;
        print t - $5 - $6, t }' /proc/stat
}

# median: of the numbers on stdin ("nan" when there are none).
median() {
    sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# tls_bench_manifests DIR CERT KEY UPSTREAM_PORT: a kubernetes.io/tls Secret from CERT and KEY
# and one ApiRoute for host bench.test serving it, proxying / to 127.0.0.1:UPSTREAM_PORT
# (the TLS benchmarks' set-up).
tls_bench_manifests() {
    mkdir -p "$1"
    {
        echo "apiVersion: v1"
        echo "kind: Secret"
        echo "metadata: {name: bench-tls, namespace: default}"
        echo "type: kubernetes.io/tls"
        echo "stringData:"
        echo "  tls.crt: |"; sed 's/^/    /' "$2"
        echo "  tls.key: |"; sed 's/^/    /' "$3"
        echo "---"
        echo "apiVersion: portcullis.dev/v1alpha1"
        echo "kind: ApiRoute"
        echo "metadata: {name: bench, namespace: default}"
        echo "spec:"
        echo "  hosts: [bench.test]"
        echo "  paths: [{type: Prefix, value: /}]"
        echo "  upstream: {targets: [{url: \"http://127.0.0.1:$4\"}]}"
        echo "  tls: {secretName: bench-tls}"
        echo "  securityHeaders: false"
    } >"$1/bench.yaml"
}

# callgrind_proxy NAME MANIFESTS PATH HEADER [PROXY ARGS...]: the proxy (standalone MANIFESTS,
# one worker, --no-audit, ARGS) under callgrind pinned to PROXY_CPU; GET PATH with HEADER (if
# not empty) from wrk -t1 -c$CONNS on LOAD_CPU: 2 s unmeasured warm-up, counters zeroed, a run
# of DURATION, counters dumped. Prints "NAME REQUESTS INSTRUCTIONS_PER_REQUEST". Needs TMP,
# PIDS (make_tmp), PORTCULLIS_BIN, CONNS, DURATION, PROXY_CPU, LOAD_CPU.
callgrind_proxy() {
    local name=$1 manifests=$2 path=$3 header=$4 port admin pid reqs total f
    shift 4
    local headers=()
    [[ -n $header ]] && headers=(-H "$header")
    port=$(free_port)
    admin=$(free_port)
    taskset -c "$PROXY_CPU" valgrind --tool=callgrind "--callgrind-out-file=$TMP/cg.%p.out" \
        "$PORTCULLIS_BIN" --manifests "$manifests" --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --no-audit --workers 1 "$@" >/dev/null 2>"$TMP/$name.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 1200); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "http://127.0.0.1:$port$path") == 200 ]] && break
        sleep 0.2
    done
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" "${headers[@]}" -d2s "http://127.0.0.1:$port$path" >/dev/null 2>&1 || true
    callgrind_control -z "$pid" >/dev/null 2>&1
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" "${headers[@]}" -d"$DURATION" "http://127.0.0.1:$port$path" \
        >"$TMP/wrk-$name.txt" 2>&1 || true
    reqs=$(awk '/requests in/ { print $1 }' "$TMP/wrk-$name.txt")
    if grep -q Non-2xx "$TMP/wrk-$name.txt" || [[ -z $reqs ]]; then
        echo "callgrind_proxy: $name: non-2xx responses or no requests" >&2
        return 1
    fi
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    f=$(ls -t "$TMP"/cg."$pid".out.* | head -1)
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$name $reqs $((total / reqs))"
}
