#!/usr/bin/env bash
# User-space instructions per request of the whole proxy, WAF off vs on, counted by
# callgrind: the load-independent companion of bench/run-waf.sh on a shared machine (wall
# time and even CPU time move with the neighbours; instruction counts do not). Kernel work
# (loopback TCP, epoll) is not counted, so the ratio of these counts is not the throughput
# ratio: it isolates what the WAF adds in user space.
#
# Same route, policy and requests as run-waf.sh; requests are sent one at a time over one
# keep-alive connection (python3 http.client): 50 to warm up, then N counted (callgrind's
# counters are zeroed in between with callgrind_control).
#
#   bench/waf-proxy-instructions.sh          # N=400
#   N=1000 PORTCULLIS_BIN=... bench/waf-proxy-instructions.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
N=${N:-400}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
require_tools "apt-get install valgrind nginx python3 curl" valgrind callgrind_control nginx python3 curl
[[ -x $PORTCULLIS_BIN ]] || (cd "$ROOT" && cargo build --release -p portcullis-proxy >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-waf-instr.XXXXXX")
PIDS=()
cleanup() {
    stop_pids
    if [[ -n ${KEEP_PROFILES:-} ]]; then cp "$TMP"/cg-* "$KEEP_PROFILES"/ 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT


UP=$(free_port)
cat >"$TMP/up.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/up.pid;
error_log $TMP/up.err;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/b; proxy_temp_path $TMP/p; fastcgi_temp_path $TMP/f;
    uwsgi_temp_path $TMP/u; scgi_temp_path $TMP/s;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
EOF
"$NGINX" -p "$TMP" -c "$TMP/up.conf" &
PIDS+=($!)

python3 "$ROOT/bench/waf-body.py" "$TMP/body.json"
cat >"$TMP/client.py" <<EOF
import http.client, sys
port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = open("$TMP/body.json", "rb").read()
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    if kind == "get":
        c.request("GET", "/api/v1/products?category=shoes&page=2&sort=-price&q=red+running+shoes")
    else:
        c.request("POST", "/api/v1/orders", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{kind}: status {r.status}")
EOF

declare -A INSTR
for waf in off on; do
    mkdir -p "$TMP/m-$waf"
    cat >"$TMP/m-$waf/bench.yaml" <<EOF
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream:
    targets: [{url: "http://127.0.0.1:$UP"}]
  securityHeaders: false
EOF
    if [[ $waf == on ]]; then
        cat >>"$TMP/m-$waf/bench.yaml" <<EOF
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
    port=$(free_port)
    admin=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$waf.%p.out" "$PORTCULLIS_BIN" \
        --manifests "$TMP/m-$waf" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --no-audit --workers 1 >/dev/null 2>"$TMP/vg-$waf.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 600); do
        curl -s -o /dev/null "http://127.0.0.1:$admin/readyz" && break
        sleep 0.2
    done
    for kind in get post; do
        python3 "$TMP/client.py" "$port" "$kind" 50
        callgrind_control -z "$pid" >/dev/null
        python3 "$TMP/client.py" "$port" "$kind" "$N"
        callgrind_control -d "$pid" >/dev/null
        sleep 0.5
        f=$(ls -t "$TMP"/cg-"$waf"."$pid".out.* | head -1)
        total=$(awk '/^(summary|totals):/ { print $2; exit }' "$f")
        INSTR[$waf-$kind]=$((total / N))
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done

echo "Whole proxy, user-space instructions per request (callgrind, $N requests on one keep-alive connection)."
echo
echo "| scenario | WAF off | WAF on | added by the WAF |"
echo "|---|---|---|---|"
for kind in get post; do
    label=$([[ $kind == get ]] && echo "GET, 4 query args" || echo "POST, 1 KiB JSON")
    echo "| $label | ${INSTR[off-$kind]} | ${INSTR[on-$kind]} | $((INSTR[on-$kind] - INSTR[off-$kind])) |"
done
