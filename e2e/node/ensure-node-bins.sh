#!/usr/bin/env bash
# Print the directory holding the Kubernetes node binaries the real-node tests run, building
# them if needed:
#
#   e2e/node/ensure-node-bins.sh   -> prints e.g. /var/cache/portcullis/node-1.20.2
#
# The directory holds kube-apiserver, kubelet, kube-controller-manager, kube-scheduler and
# kube-proxy, all v1.20.2 from the same Debian source tree (and the same vendored-code patches)
# that e2e/env/ensure-apiserver.sh extracts, patches and builds the API server from; that script
# runs first, so the tree is there and patched. kubelet is built static
# (KUBE_STATIC_OVERRIDES=kubelet): otherwise it is a cgo build that shares nothing of the Go build
# cache with the other four. First build: ~11 min on 2 cores, then cached.
#
# Environment: PORTCULLIS_CACHE (default /var/cache/portcullis), PORTCULLIS_NICE (default 19).
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE=${PORTCULLIS_CACHE:-/var/cache/portcullis}
NICE=${PORTCULLIS_NICE:-19}
OUT="$CACHE/node-$KUBE_VERSION"
NODE_BINS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '[ensure-node-bins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

APISERVER=$("$HERE/../env/ensure-apiserver.sh")
PATCHSET=$(<"$APISERVER.patchset")

# Cached only if built from a tree carrying the same patches as the cached API server.
cached() {
  [[ -f $OUT/.patchset && $(<"$OUT/.patchset") == "$PATCHSET" ]] || return 1
  local b
  for b in kube-apiserver "${NODE_BINS[@]}"; do [[ -x $OUT/$b ]] || return 1; done
}
if cached; then echo "$OUT"; exit 0; fi

exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then log "another build holds $CACHE/.build.lock; waiting"; flock 9; fi
if cached; then echo "$OUT"; exit 0; fi

SRC=$(find "$CACHE/build" -mindepth 1 -maxdepth 1 -type d -name "kubernetes-*${KUBE_VERSION}*" | head -n1)
[[ -n $SRC && -f $SRC/.portcullis-extracted ]] \
  || die "no patched kubernetes source tree under $CACHE/build (PORTCULLIS_KEEP_BUILD=0 removed it?): remove $APISERVER and rerun"

export GOFLAGS='' GO111MODULE=off GOTOOLCHAIN=local
export KUBE_GIT_VERSION="v$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
export KUBE_STATIC_OVERRIDES=kubelet
what=""; for b in "${NODE_BINS[@]}"; do what+=" cmd/$b"; done
log "building${what} (nice -n $NICE; ~11 min cold on 2 cores)"
start_ts=$(date +%s)
(cd "$SRC" && nice -n "$NICE" make WHAT="${what# }" >&2)
log "compiled in $(( $(date +%s) - start_ts ))s"

tmp="$OUT.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
for b in "${NODE_BINS[@]}"; do
  f="$SRC/_output/bin/$b"
  [[ -x $f ]] || f=$(find "$SRC/_output" -type f -name "$b" -perm -u+x | head -n1)
  [[ -n $f && -x $f ]] || die "build finished but no $b under $SRC/_output"
  "$f" --version >&2 || die "$b does not run"
  cp "$f" "$tmp/$b"
done
cp "$APISERVER" "$tmp/kube-apiserver"
echo "$PATCHSET" > "$tmp/.patchset"
rm -rf "$OUT"; mv "$tmp" "$OUT"
log "cached $OUT"
echo "$OUT"
