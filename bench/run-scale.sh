#!/usr/bin/env bash
# Scale benchmark (issue #3): N ApiRoutes and M ConsumerCredentials against a real
# kube-apiserver, with the release operator and one release proxy as processes.
# Measures create throughput, convergence, apply → Programmed latency of single changes
# (while the first status pass still drains, and after), compile and publish times, config
# bytes, RSS and CPU use. Not part of CI: at 10k/100k it takes 10-20 minutes.
#
#   bench/run-scale.sh [ROUTES=10000] [CONSUMERS=100000]      (CHANGES=7 per phase)
#
# Writes bench/results/scale-<UTC time>.json; operator, proxy and API server logs stay in
# the temporary state directory it prints (KEEP_STATE=1 keeps it). The environment reaches
# the operator and the proxy (e.g. MALLOC_ARENA_MAX=2, recorded in the results).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTES=${1:-10000}
CONSUMERS=${2:-100000}
STATE=$(mktemp -d /tmp/portcullis-scale.XXXXXX)
RESULTS=bench/results
mkdir -p "$RESULTS"

cargo build --release -q -p portcullis-operator -p portcullis-proxy -p portcullis-bench
# The revision the binaries were built from (the tree may change while the run goes on).
GIT_REV="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- operator proxy compiler crds bench/src || echo -dirty)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  e2e/env/stop.sh "$STATE" || true
  if [[ ${KEEP_STATE:-0} == 1 ]]; then echo "state kept in $STATE" >&2; else rm -rf "$STATE"; fi
}
trap cleanup EXIT

# Large lists and many watchers: give etcd and the API server room.
PORTCULLIS_IGNORE_KUBECONFIG=1 PORTCULLIS_APISERVER_ARGS="--max-requests-inflight=1000 --max-mutating-requests-inflight=500" \
  e2e/env/start.sh "$STATE" >/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
export APISERVER_PID ETCD_PID
kubectl apply -f crds/manifests >/dev/null 2>&1
kubectl apply -f e2e/manifests/rbac.yaml >/dev/null 2>&1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OP_ADMIN=127.0.0.1:$(free_port)
PX_ADMIN=127.0.0.1:$(free_port)
PX_LISTEN=127.0.0.1:$(free_port)
KUBECONFIG=$STATE/kubeconfig-operator target/release/portcullis-operator --admin-listen "$OP_ADMIN" \
  --identity bench-operator >"$STATE/operator.log" 2>&1 &
OP_PID=$!; pids+=("$OP_PID")
KUBECONFIG=$STATE/kubeconfig-proxy target/release/portcullis-proxy --kube --listen "$PX_LISTEN" \
  --admin-listen "$PX_ADMIN" --replica-id bench-proxy --report-interval 2s --no-audit >"$STATE/proxy.log" 2>&1 &
PX_PID=$!; pids+=("$PX_PID")

out="$RESULTS/scale-$(date -u +%Y%m%dT%H%M%SZ).json"
raw=$(OPERATOR_PID=$OP_PID PROXY_PID=$PX_PID KUBECONFIG=$STATE/kubeconfig \
  target/release/scale-cluster "$ROUTES" "$CONSUMERS" "$OP_ADMIN" "$PX_ADMIN")
# Compile and publish of every config the operator published, from its log.
publishes=$(jq -c -R -s '[split("\n")[] | fromjson? | select(.fields.message == "published config") | .fields | del(.message, .generation)]' "$STATE/operator.log" 2>/dev/null || echo null)
# When each config was loaded by the proxy (to split served_ms into operator and proxy time).
loads=$(jq -c -R -s '[split("\n")[] | fromjson? | select(.fields.message == "config loaded from the cluster") | {at: .timestamp, generation: .fields.generation}]' "$STATE/proxy.log" 2>/dev/null || echo null)
published_at=$(jq -c -R -s '[split("\n")[] | fromjson? | select(.fields.message == "published config") | {at: .timestamp, generation: .fields.generation}]' "$STATE/operator.log" 2>/dev/null || echo null)
kill "$OP_PID" "$PX_PID" 2>/dev/null || true
echo "in-memory compile of the same objects (operator and proxy stopped):" >&2
in_memory=$(target/release/scale-compile "$ROUTES" "$CONSUMERS" 5 | tee /dev/stderr)
jq -n --argjson run "$raw" --argjson publishes "$publishes" --argjson loads "$loads" --argjson published_at "$published_at" --arg in_memory "$in_memory" \
  --arg git "$GIT_REV" --arg malloc_arena_max "${MALLOC_ARENA_MAX:-}" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" \
  '$run + {git: $git, malloc_arena_max: $malloc_arena_max, cpu: $cpu, nproc: '"$(nproc)"', publishes: $publishes, published_at: $published_at, proxy_loads: $loads, in_memory_compile: $in_memory}' | tee "$out"
