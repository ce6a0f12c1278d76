#!/usr/bin/env bash
# Stops (if running) and restarts only the kube-apiserver of a control plane started by
# start.sh, with the same port, certificates and etcd data, then waits until it is ready.
# Tests use it to check that proxies survive an API server outage and converge after it.
#
#   e2e/env/restart-apiserver.sh STATEDIR [--stop-only]
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 STATEDIR [--stop-only]" >&2; exit 2; }
STATE=$(cd "$1" && pwd -P)
HERE=$(cd "$(dirname "$0")" && pwd -P)
TIMEOUT=${PORTCULLIS_START_TIMEOUT:-120}
# shellcheck disable=SC1091
source "$STATE/env"

PORTCULLIS_STOP_ONLY=apiserver "$HERE/stop.sh" "$STATE"
[[ ${2:-} == --stop-only ]] && exit 0

"$STATE/run-apiserver.sh" </dev/null >>"$STATE/apiserver.log" 2>&1 &
deadline=$(( $(date +%s) + TIMEOUT ))
api() { curl -fsS --max-time 3 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$APISERVER_URL$1"; }
until [[ $(api /readyz 2>/dev/null) == ok ]]; do
  (( $(date +%s) < deadline )) || { tail -n 40 "$STATE/apiserver.log" >&2; echo "kube-apiserver not ready" >&2; exit 1; }
  sleep 0.25
done
