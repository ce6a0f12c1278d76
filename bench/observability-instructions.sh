#!/usr/bin/env bash
# Load-independent companion of bench/run-observability.sh: proxy instructions per request
# under callgrind, for the same three scenarios (plain: --decision-buffer 0
# --no-trace-context; observed: the defaults; observed-parent: the defaults with an unsampled
# traceparent sent). Instruction counts do not move with what else runs on a shared machine,
# which CPU time does. plain-parent is plain with the same traceparent sent (forwarded
# untouched): the baseline of observed-parent, since the header costs parsing and
# forwarding in any proxy. Each scenario: the proxy (one worker, --no-audit) under callgrind
# pinned to PROXY_CPU, a 2 s unmeasured warm-up, counters zeroed, wrk -t1 -c$CONNS for
# DURATION, counters dumped; instructions / requests wrk completed.
#
#   bench/observability-instructions.sh            # CONNS=16 DURATION=10s
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CONNS=${CONNS:-16}
DURATION=${DURATION:-10s}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-proxy}
require_tools "apt-get install valgrind nginx wrk curl" valgrind callgrind_control nginx wrk curl
[[ -x $PORTCULLIS_BIN ]] || (cd "$ROOT" && cargo build --release --locked -p portcullis-proxy --bin portcullis-proxy >&2)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
die() { printf '[obs-instr] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"

make_tmp portcullis-obs-instr
UP=$(free_port)
write_upstream_conf "$TMP/upstream" "$UP"
start_nginx upstream "$TMP/upstream" "$LOAD_CPU"
mkdir -p "$TMP/m"
cat >"$TMP/m/bench.yaml" <<YAML
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: bench, namespace: default}
spec:
  paths: [{type: Prefix, value: /}]
  upstream: {targets: [{url: "http://127.0.0.1:$UP"}]}
  securityHeaders: false
YAML

measure() { # NAME HEADER ARGS...
    local name=$1 header=$2
    shift 2
    callgrind_proxy "$name" "$TMP/m" / "$header" "$@"
}

PARENT="traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
echo "| scenario | requests | proxy instructions per request | vs its baseline |"
echo "|---|---:|---:|---:|"
declare -A IPR
while read -r name reqs ipr; do
    IPR[$name]=$ipr
    case $name in observed) base=${IPR[plain]} ;; observed-parent) base=${IPR[plain-parent]} ;; *) base=$ipr ;; esac
    printf '| %s | %d | %d | %s |\n' "$name" "$reqs" "$ipr" \
        "$(awk -v a="$ipr" -v b="$base" 'BEGIN { printf "%+.2f%%", 100 * (a / b - 1) }')"
done < <(
    measure plain "" --decision-buffer 0 --no-trace-context
    measure observed ""
    measure plain-parent "$PARENT" --decision-buffer 0 --no-trace-context
    measure observed-parent "$PARENT"
)
