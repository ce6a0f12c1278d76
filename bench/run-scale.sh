#!/usr/bin/env bash
# Scale benchmark (issue #3): N ApiRoutes and M ConsumerCredentials against a real
# kube-apiserver, with the release operator and one release proxy as processes.
# Measures create throughput, convergence, apply → Programmed latency of single changes,
# compile time, config bytes and RSS. Not part of CI: it takes several minutes.
#
#   bench/run-scale.sh [ROUTES=10000] [CONSUMERS=100000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTES=${1:-10000}
CONSUMERS=${2:-100000}
STATE=$(mktemp -d /tmp/portcullis-scale.XXXXXX)
RESULTS=bench/results
mkdir -p "$RESULTS"

cargo build --release -q -p portcullis-operator -p portcullis-proxy -p portcullis-bench
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  e2e/env/stop.sh "$STATE" || true
}
trap cleanup EXIT

# Large lists and many watchers: give etcd and the API server room.
PORTCULLIS_IGNORE_KUBECONFIG=1 PORTCULLIS_APISERVER_ARGS="--max-requests-inflight=1000 --max-mutating-requests-inflight=500" \
  e2e/env/start.sh "$STATE" >/dev/null
# shellcheck disable=SC1091
source "$STATE/env"
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
KUBECONFIG=$STATE/kubeconfig target/release/scale-cluster "$ROUTES" "$CONSUMERS" "$OP_ADMIN" "$PX_ADMIN" "$PX_PID" "$OP_PID" | tee "$out"
echo "in-memory compile of the same objects:"
target/release/scale-compile "$ROUTES" "$CONSUMERS" 5
