#!/usr/bin/env bash
# A proxied run of issue #23's routing target: proxy instructions per request (callgrind, so
# independent of the machine's other load) with 10 and with 10,000 ApiRoutes on one host, the
# request hitting a route in the middle of the set. Each size: the proxy (standalone
# manifests, one worker, --no-audit) under callgrind pinned to PROXY_CPU, a 2 s unmeasured
# warm-up, counters zeroed, wrk -t1 -c$CONNS for DURATION, counters dumped; instructions /
# requests wrk completed. The lookup alone: `cargo run --release -p portcullis-bench --bin routing`.
#
#   bench/routing-instructions.sh            # SIZES="10 10000" CONNS=16 DURATION=10s
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
SIZES=${SIZES:-"10 10000"}
CONNS=${CONNS:-16}
DURATION=${DURATION:-10s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
require_tools "apt-get install valgrind nginx wrk curl" valgrind callgrind_control nginx wrk curl
[[ -x $PORTCULLIS_BIN ]] || (cd "$ROOT" && cargo build --release --locked -p portcullis-proxy --bin portcullis-proxy >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
die() { printf '[routing-instr] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"

make_tmp portcullis-routing-instr
UP=$(free_port)
write_upstream_conf "$TMP/upstream" "$UP"
start_nginx upstream "$TMP/upstream" "$LOAD_CPU"

manifests() { # DIR N: N routes on api.example.com, /svc-<i>/v1, every fifth with a method list
    mkdir -p "$1"
    python3 - "$1/routes.yaml" "$2" "$UP" <<'PY'
import sys
out, n, up = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, "w") as f:
    for i in range(n):
        methods = "[GET, POST]" if i % 5 == 0 else "[]"
        f.write(f"""---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {{name: route-{i}, namespace: team-0}}
spec:
  hosts: [api.example.com]
  paths: [{{type: Prefix, value: /svc-{i}/v1}}]
  methods: {methods}
  upstream: {{targets: [{{url: "http://127.0.0.1:{up}"}}]}}
  securityHeaders: false
""")
PY
}

measure() { # N
    manifests "$TMP/m$1" "$1"
    callgrind_proxy "$1" "$TMP/m$1" "/svc-$(($1 / 2 + 1))/v1/items" "Host: api.example.com"
}

echo "| routes on the host | requests | proxy instructions per request | vs the first |"
echo "|---:|---:|---:|---:|"
first=
for n in $SIZES; do
    read -r n reqs ipr < <(measure "$n")
    first=${first:-$ipr}
    printf '| %d | %d | %d | %s |\n' "$n" "$reqs" "$ipr" \
        "$(awk -v a="$ipr" -v b="$first" 'BEGIN { printf "%.3fx", a / b }')"
done
