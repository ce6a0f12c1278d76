#!/usr/bin/env bash
# Runs COMMAND against a real single-node Kubernetes brought up for it, and always tears the
# node down afterwards (also when COMMAND fails or the run is interrupted):
#
#   e2e/node/run.sh COMMAND [ARG...]      # as root; exits with COMMAND's status
#
# 1. the node binaries (ensure-node-bins.sh: built once from Debian's source, ~11 min, cached),
# 2. the release binaries of portcullis-operator and portcullis-proxy (cargo build --release,
#    skipped with PORTCULLIS_BIN_DIR=dir-holding-both), and the images (build-images.sh, cached),
# 3. the machine-wide node lock, a fresh run folder, up.sh,
# 4. COMMAND with the node's environment (RUN_DIR/env): KUBECONFIG (cluster admin),
#    PORTCULLIS_NODE_DIR, PORTCULLIS_NODE_NAME, PORTCULLIS_NODE_APISERVER, PORTCULLIS_NODE_CTR,
#    PORTCULLIS_NODE_IMAGES, plus PORTCULLIS_IMAGE_REPOSITORY / PORTCULLIS_IMAGE_TAG (the chart's
#    image values), PORTCULLIS_BUSYBOX_IMAGE and PORTCULLIS_CHART (charts/portcullis),
# 5. down.sh, which fails the run if anything is left behind. The node's logs are kept in
#    PORTCULLIS_NODE_LOGS (default target/node-logs/) when the run failed, removed otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/common.sh"
[[ $# -ge 1 ]] || node_die "usage: run.sh COMMAND [ARG...]"
[[ $(id -u) -eq 0 ]] || node_die "needs root (bridge, iptables, mounts, containerd)"
for c in containerd runc ctr buildah iptables conntrack etcd kubectl jq bc gcc openssl; do
  command -v $c >/dev/null || node_die "$c missing: run e2e/install-deps.sh"
done
[[ -x /usr/lib/cni/bridge ]] || node_die "CNI plugins missing: run e2e/install-deps.sh"

T0=$(date +%s)
NODE_BINS=$("$HERE/ensure-node-bins.sh")
if [[ -z ${PORTCULLIS_BIN_DIR:-} ]]; then
  node_log "cargo build --release (portcullis-operator, portcullis-proxy)"
  (cd "$ROOT" && cargo build --release --locked -p portcullis-operator -p portcullis-proxy --bins)
  PORTCULLIS_BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
images=$("$HERE/build-images.sh" "$PORTCULLIS_BIN_DIR")
mapfile -t IMAGES <<<"$images"
node_log "binaries and images ready in $(( $(date +%s) - T0 ))s"

mkdir -p "$(dirname "$NODE_LOCK")"
exec 8>"$NODE_LOCK"
if ! flock -n 8; then
  node_log "another node holds $NODE_LOCK; waiting (up to 1 h)"
  flock -w 3600 8 || node_die "the node lock stayed taken"
fi
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-node.XXXXXX")
LOGS_TO=${PORTCULLIS_NODE_LOGS:-$ROOT/target/node-logs}
status=1
finish() {
  trap - EXIT INT TERM
  local down=0
  "$HERE/down.sh" "$RUN_DIR" || down=1
  if [[ $status -ne 0 || $down -ne 0 ]]; then
    mkdir -p "$LOGS_TO"
    rm -rf "$LOGS_TO/$(basename "$RUN_DIR")"
    mv "$RUN_DIR/logs" "$LOGS_TO/$(basename "$RUN_DIR")" 2>/dev/null
    node_log "node logs kept in $LOGS_TO/$(basename "$RUN_DIR")"
  fi
  rm -rf "$RUN_DIR"
  ((status == 0 && down != 0)) && status=1
  node_log "node run finished in $(( $(date +%s) - T0 ))s (status $status)"
  exit $status
}
# bash runs a trap only once the foreground command has returned: up.sh and COMMAND run in the
# background and are waited for, so that a signal (a CI timeout's SIGTERM) tears down at once.
child=
interrupted() {
  status=130
  [[ -n $child ]] && kill -TERM "$child" 2>/dev/null && wait "$child" 2>/dev/null
  exit 130
}
trap finish EXIT
trap interrupted INT TERM
in_background() {
  "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=
  return $rc
}

in_background "$HERE/up.sh" "$RUN_DIR" "$NODE_BINS" "${IMAGES[@]}"
# shellcheck disable=SC1091
. "$RUN_DIR/env"
APP_VERSION=$(awk -F'"' '/^appVersion:/{print $2}' "$ROOT/charts/portcullis/Chart.yaml")
export PORTCULLIS_IMAGE_REPOSITORY=localhost/portcullis PORTCULLIS_IMAGE_TAG=$APP_VERSION
export PORTCULLIS_BUSYBOX_IMAGE=localhost/portcullis/busybox:1 PORTCULLIS_CHART=$ROOT/charts/portcullis
status=0
in_background "$@" || status=$?
