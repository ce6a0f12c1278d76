#!/usr/bin/env bash
# Builds the node's images without a registry or a container engine (buildah FROM scratch, vfs
# storage) as docker-archive tars, cached by content hash, and prints their paths (pause first):
#
#   pause       localhost/portcullis/pause:3.2      build/pause/linux/pause.c of the node's source tree, static
#   busybox     localhost/portcullis/busybox:1      Debian's busybox-static (upstreams, clients in tests)
#   portcullis  localhost/portcullis:APPVERSION     portcullis-operator + portcullis-proxy (release), exactly
#                                                   the shared libraries ldd lists, a static /bin/sleep for the
#                                                   preStop hook, CA certificates; APPVERSION from Chart.yaml
#
#   e2e/node/build-images.sh [PORTCULLIS_BIN_DIR]   # default: ${CARGO_TARGET_DIR:-target}/release
#
# Cache: $PORTCULLIS_CACHE/node-images/NAME-HASH.tar (an older tar of NAME is removed).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/common.sh"
BIN_DIR=$(realpath "${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release}")
OUT=$CACHE/node-images
mkdir -p "$OUT"
# Bumped when the recipe below changes what an image holds.
RECIPE=1

for b in portcullis-operator portcullis-proxy; do
  [[ -x $BIN_DIR/$b ]] || node_die "no $BIN_DIR/$b: cargo build --release -p portcullis-operator -p portcullis-proxy --bins"
done
SRC=$(find "$CACHE/build" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -n $SRC && -f $SRC/build/pause/linux/pause.c ]] || node_die "no kubernetes source tree under $CACHE/build (run ensure-node-bins.sh)"
APP_VERSION=$(awk -F'"' '/^appVersion:/{print $2}' "$ROOT/charts/portcullis/Chart.yaml")
[[ -n $APP_VERSION ]] || node_die "no appVersion in charts/portcullis/Chart.yaml"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-images.XXXXXX")
# buildah keeps a blob cache in /var/lib/containers whatever --root says: gone with us if we made it.
[[ -e /var/lib/containers ]] && own_cache= || own_cache=/var/lib/containers
trap 'rm -rf "$WORK" $own_cache' EXIT
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)

# name, tag, hash, rootfs dir, buildah config args...: commits and writes $OUT/name-hash.tar
image() {
  local name=$1 tag=$2 hash=$3 rootfs=$4 c; shift 4
  local tar=$OUT/$name-$hash.tar
  if [[ ! -f $tar ]]; then
    node_log "building image $tag"
    c=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" copy -q "$c" "$rootfs/" / >/dev/null
    "${BUILDAH[@]}" config "$@" "$c"
    "${BUILDAH[@]}" commit -q "$c" "$tag" >/dev/null
    "${BUILDAH[@]}" rm "$c" >/dev/null
    "${BUILDAH[@]}" push -q "$tag" "docker-archive:$tar.tmp:$tag"
    mv "$tar.tmp" "$tar"
    find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$hash.tar" -delete
  fi
  echo "$tar"
}
digest() { sha256sum | cut -c1-16; }

# pause
mkdir -p "$WORK/pause"
h=$( { echo "$RECIPE"; cat "$SRC/build/pause/linux/pause.c"; gcc --version | head -n1; } | digest)
if [[ ! -f $OUT/pause-$h.tar ]]; then
  gcc -Os -static -o "$WORK/pause/pause" "$SRC/build/pause/linux/pause.c"
  strip "$WORK/pause/pause"
fi
image pause localhost/portcullis/pause:3.2 "$h" "$WORK/pause" --entrypoint '["/pause"]'

# busybox
BB=/bin/busybox
[[ $(ldd "$BB" 2>&1 || true) == *"not a dynamic executable"* ]] || node_die "$BB is not static (apt-get install busybox-static)"
h=$( { echo "$RECIPE"; cat "$BB"; } | digest)
if [[ ! -f $OUT/busybox-$h.tar ]]; then
  r=$WORK/busybox; mkdir -p "$r/bin" "$r/tmp" "$r/etc" "$r/www"
  cp "$BB" "$r/bin/busybox"
  for a in $("$BB" --list); do [[ $a == busybox ]] || ln -sf busybox "$r/bin/$a"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$r/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$r/etc/passwd"
  echo 'hello from the upstream' >"$r/www/index.html"
fi
image busybox localhost/portcullis/busybox:1 "$h" "$WORK/busybox" --env PATH=/bin --cmd '["/bin/sh"]'

# portcullis: the binaries, the libraries ldd resolves for them (same paths), the loader.
r=$WORK/portcullis
mkdir -p "$r/usr/local/bin" "$r/bin" "$r/tmp" "$r/etc/ssl/certs"
cp "$BIN_DIR/portcullis-operator" "$BIN_DIR/portcullis-proxy" "$r/usr/local/bin/"
gcc -Os -static -o "$r/bin/sleep" "$HERE/images/sleep.c"
strip "$r/bin/sleep"
for lib in $(ldd "$r/usr/local/bin/portcullis-operator" "$r/usr/local/bin/portcullis-proxy" |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
  mkdir -p "$r$(dirname "$lib")"
  cp -L "$lib" "$r$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
chmod 1777 "$r/tmp"
h=$( { echo "$RECIPE"; cd "$r" && find . -type f | sort | xargs sha256sum; } | digest)
image portcullis "localhost/portcullis:$APP_VERSION" "$h" "$r" \
  --user 65532:65532 --entrypoint '["/usr/local/bin/portcullis-proxy"]' --cmd '["--help"]' \
  --port 8080 --port 9901 --port 9902 --port 9443
