#!/usr/bin/env bash
# Print the path of a kube-apiserver binary for Portcullis' e2e tests, building it if needed.
#
#   e2e/env/ensure-apiserver.sh            -> prints e.g. /var/cache/portcullis/kube-apiserver-1.20.2
#
# Lookup order:
#   1. $KUBEBUILDER_ASSETS/kube-apiserver   (envtest binaries the user already has)
#   2. $PORTCULLIS_CACHE/kube-apiserver-1.20.2   (default cache: /var/cache/portcullis)
#   3. build it from Debian bookworm's `kubernetes` source package (1.20.2, vendored deps) with
#      Debian's Go 1.19, after two patches to vendored code that 1.20 needs with a Go newer than
#      the 1.15 it was released with (modern-go/reflect2 map iteration, Go >= 1.18; kube-openapi's
#      "empty string is null" check, Go >= 1.16), then copy it into the cache.
#      First build: ~5.5 min on this 2-core machine (nice 19, moderately loaded).
#
# Also makes sure the Debian packages the env needs are installed (etcd-server, golang-go,
# rsync, jq, dpkg-dev) when it has to build.  Progress goes to stderr; only the path goes to
# stdout.  Safe to run concurrently (flock) and repeatedly (every step is idempotent).
#
# Environment:
#   PORTCULLIS_CACHE         cache dir (default /var/cache/portcullis); the source tree (with
#                            its Go build cache, ~1.8 GiB after a build) lives in $PORTCULLIS_CACHE/build
#   PORTCULLIS_DEBIAN_SUITE  Debian suite for deb-src (default bookworm)
#   PORTCULLIS_NICE          nice level for the Go build (default 19; the machine is shared)
#   PORTCULLIS_KEEP_BUILD    1 (default) keeps the source tree after a successful build; 0 removes it
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE=${PORTCULLIS_CACHE:-/var/cache/portcullis}
BIN="$CACHE/kube-apiserver-$KUBE_VERSION"
SUITE=${PORTCULLIS_DEBIAN_SUITE:-bookworm}
NICE=${PORTCULLIS_NICE:-19}
BUILD_ROOT="$CACHE/build"

log() { printf '[ensure-apiserver %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# 1. envtest assets
if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]]; then
  log "using \$KUBEBUILDER_ASSETS/kube-apiserver"
  echo "$KUBEBUILDER_ASSETS/kube-apiserver"
  exit 0
fi

# 2. cache. The binary counts only if it was built with the current set of source patches
# (recorded next to it), so a fix added here invalidates older cached builds.
PATCHSET="reflect2-mapiterinit-go118 kube-openapi-zero-value-go116"
cached() { [[ -x "$BIN" && -f "$BIN.patchset" && $(<"$BIN.patchset") == "$PATCHSET" ]]; }
if cached; then
  echo "$BIN"
  exit 0
fi

# 3. build -- serialise concurrent callers
mkdir -p "$CACHE" "$BUILD_ROOT"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.build.lock; waiting"
  flock 9
fi
if cached; then echo "$BIN"; exit 0; fi   # built by whoever held the lock

SUDO=
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo: cannot install packages / add deb-src"
  SUDO=sudo
fi

start_ts=$(date +%s)
if [[ -x "$BIN" ]]; then
  log "cached $BIN was built without patches [$PATCHSET]; rebuilding"
else
  log "no cached kube-apiserver at $BIN; building $KUBE_VERSION from Debian's kubernetes source package"
fi

# --- Debian packages --------------------------------------------------------------------
PKGS=(etcd-server golang-go rsync jq dpkg-dev)
apt_updated=0
apt_update() { log "apt-get update"; $SUDO apt-get update -qq >&2; apt_updated=1; }
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  # the package lists may be empty/stale on a fresh machine
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then apt_update; fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { ((apt_updated)) || { apt_update; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }; }
fi
command -v go >/dev/null || die "go not on PATH after installing golang-go"
log "$(go version)"

# --- deb-src entry ----------------------------------------------------------------------
# Prints "URI<TAB>SIGNED_BY" of the first deb (or deb-src, with $1=deb-src) entry for
# $SUITE main found in the machine's APT sources (one-line .list and deb822 .sources files).
apt_entry() {
  local want=$1
  perl -e '
    my ($want, $suite, @files) = @ARGV;
    for my $f (@files) {
      open my $fh, "<", $f or next;
      local $/; my $txt = <$fh>; close $fh;
      if ($f =~ /\.sources$/) {
        for my $st (split /\n\s*\n/, $txt) {
          my %h; my $k;
          for (split /\n/, $st) {
            next if /^\s*#/;
            if (/^([\w-]+):\s*(.*)$/) { $k = lc $1; $h{$k} = $2 } elsif (/^\s+(.*)$/ && $k) { $h{$k} .= " $1" }
          }
          next if lc($h{enabled} // "yes") eq "no";
          my %t = map { $_ => 1 } split " ", ($h{types} // "");
          my %s = map { $_ => 1 } split " ", ($h{suites} // "");
          my %c = map { $_ => 1 } split " ", ($h{components} // "");
          next unless $t{$want} && $s{$suite} && $c{main};
          my ($uri) = split " ", ($h{uris} // ""); next unless $uri;
          print "$uri\t", ($h{"signed-by"} // ""), "\n"; exit 0;
        }
      } else {
        for (split /\n/, $txt) {
          next unless /^\s*\Q$want\E\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s+(.*)$/;
          my ($opts, $uri, $s, $comps) = ($1 // "", $2, $3, $4);
          next unless $s eq $suite && " $comps " =~ / main /;
          my ($sb) = $opts =~ /signed-by=(\S+)/;
          print "$uri\t", ($sb // ""), "\n"; exit 0;
        }
      }
    }
    exit 1;
  ' "$want" "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null
}
if apt_entry deb-src >/dev/null; then
  log "deb-src for $SUITE main already configured"
else
  entry=$(apt_entry deb) || die "no 'deb ... $SUITE main' entry in /etc/apt/sources.list{,.d/*}; cannot derive a mirror for deb-src"
  uri=${entry%%$'\t'*}; signed_by=${entry#*$'\t'}
  if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
    f=/etc/apt/sources.list.d/portcullis-deb-src.sources
    log "adding deb-src ($uri $SUITE main) as $f"
    { echo "Types: deb-src"; echo "URIs: $uri"; echo "Suites: $SUITE"; echo "Components: main"
      [[ -n $signed_by ]] && echo "Signed-By: $signed_by"; } | $SUDO tee "$f" >/dev/null
  else
    f=/etc/apt/sources.list.d/portcullis-deb-src.list
    log "adding deb-src ($uri $SUITE main) as $f"
    opts=; [[ -n $signed_by ]] && opts="[signed-by=$signed_by] "
    echo "deb-src ${opts}$uri $SUITE main" | $SUDO tee "$f" >/dev/null
  fi
  apt_update
fi
if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
  ((apt_updated)) || apt_update
  apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes' \
    || die "apt-cache showsrc kubernetes finds nothing even with deb-src configured"
fi

# --- source tree ------------------------------------------------------------------------
SRC=$(find "$BUILD_ROOT" -mindepth 1 -maxdepth 1 -type d -name "kubernetes-*${KUBE_VERSION}*" | head -n1)
if [[ -z $SRC || ! -f $SRC/.portcullis-extracted ]]; then
  [[ -n $SRC ]] && { log "removing incomplete $SRC"; rm -rf "$SRC"; }
  log "apt-get source kubernetes (into $BUILD_ROOT)"
  # apt-get source as root warns that the download is unsandboxed; harmless
  (cd "$BUILD_ROOT" && apt-get source -qq kubernetes >&2)
  SRC=$(find "$BUILD_ROOT" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [[ -n $SRC && -d $SRC/vendor ]] || die "no kubernetes-* tree with vendor/ under $BUILD_ROOT"
  touch "$SRC/.portcullis-extracted"
fi
log "source tree: $SRC"

# --- reflect2 fix (what modern-go/reflect2 v1.0.2 did) ----------------------------------
# reflect2 v1.0.1 declares reflect.mapiterinit as returning *hiter. Since Go 1.18 the runtime
# function fills a caller-provided iterator instead, so v1.0.1 reads garbage and faults on the
# first map iteration (json-iterator -> first real API request). Declare the Go >= 1.18
# signature, give hiter the runtime's full layout (so mapiterinit/mapiternext write into
# memory we own), and pass &it from UnsafeIterate.
R2="$SRC/vendor/github.com/modern-go/reflect2"
[[ -f $R2/unsafe_link.go && -f $R2/unsafe_map.go ]] || die "vendored reflect2 not found at $R2"
# Each file is patched (and checked) on its own, so a half-applied patch is completed on rerun.
if grep -q 'checkBucket' "$R2/unsafe_link.go"; then
  log "reflect2 unsafe_link.go already patched"
else
  log "patching vendored reflect2 unsafe_link.go (mapiterinit signature, full hiter layout)"
  perl -0777 -i -pe '
    s#// m escapes into the return value, but the caller of mapiterinit\n// doesn.t let the return value escape\.\n#// Go >= 1.18: mapiterinit fills the caller-provided iterator (modern-go/reflect2 v1.0.2 fix).\n#;
    s#(//go:linkname mapiterinit reflect\.mapiterinit\n)func mapiterinit\(rtype unsafe\.Pointer, m unsafe\.Pointer\) \*hiter\n#${1}func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)\n#
      or die "unsafe_link.go: mapiterinit declaration not found\n";
    # Same field order and sizes as runtime.hiter in Go 1.19 (src/runtime/map.go).
    s#type hiter struct \{.*?\n\}\n#type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}
#s or die "unsafe_link.go: hiter struct not found\n";
  ' "$R2/unsafe_link.go"
fi
if grep -q 'mapiterinit(type2.rtype, \*(\*unsafe.Pointer)(obj), &it)' "$R2/unsafe_map.go"; then
  log "reflect2 unsafe_map.go already patched"
else
  log "patching vendored reflect2 unsafe_map.go (UnsafeIterate passes &it)"
  perl -0777 -i -pe '
    s#(func \(type2 \*UnsafeMapType\) UnsafeIterate\(obj unsafe\.Pointer\) MapIterator \{\n)\treturn &UnsafeMapIterator\{\n(\s*)hiter:(\s*)mapiterinit\(type2\.rtype, \*\(\*unsafe\.Pointer\)\(obj\)\),\n#${1}\tvar it hiter\n\tmapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)\n\treturn &UnsafeMapIterator{\n${2}hiter:${3}&it,\n#
      or die "unsafe_map.go: UnsafeIterate body not found\n";
  ' "$R2/unsafe_map.go"
fi
grep -q 'func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it \*hiter)' "$R2/unsafe_link.go" \
  && grep -q 'checkBucket uintptr' "$R2/unsafe_link.go" \
  && grep -q 'hiter: *&it,' "$R2/unsafe_map.go" || die "reflect2 patch incomplete"
if grep -n 'mapiterinit(' "$R2"/*.go | grep -v -e 'func mapiterinit' -e '&it)' >&2; then
  die "mapiterinit call sites left unpatched (listed above)"
fi
(cd "$R2" && gofmt -e unsafe_link.go unsafe_map.go >/dev/null) || die "patched reflect2 files do not parse"

# --- kube-openapi / go-openapi zero-value fix (kubernetes#99804, kube-openapi#230) ------------
# Since Go 1.16 reflect.Zero returns a shared zero value, so the typeValidator's check
# `reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))` became true for
# "" and a 1.20 apiserver built with Go >= 1.16 rejects every empty string in a custom resource
# (and `default: ''` in a CRD schema) with `must be of type string: "null"`. Upstream 1.20 was
# built with Go 1.15, where the check was never true; 1.21 removed it. Do the same.
for f in "$SRC/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go" \
         "$SRC/vendor/github.com/go-openapi/validate/type.go"; do
  [[ -f $f ]] || die "$f not found"
  if grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))' "$f"; then
    log "patching ${f#"$SRC/"} (empty string is not null)"
    perl -0777 -i -pe 's#if data == nil \|\| reflect\.DeepEqual\(reflect\.Zero\(reflect\.TypeOf\(data\)\), reflect\.ValueOf\(data\)\) \{#if data == nil {#
      or die "typeValidator zero-value check not found\n"' "$f"
    gofmt -e "$f" >/dev/null || die "patched $f does not parse"
  else
    grep -q 'if data == nil {' "$f" || die "$f: neither the original nor the patched check found"
    log "${f#"$SRC/"} already patched"
  fi
done

# --- build ------------------------------------------------------------------------------
OUT_BIN="$SRC/_output/bin/kube-apiserver"
# hack/lib/golang.sh builds in GOPATH mode (GOPATH=$SRC/_output/local/go with a
# k8s.io/kubernetes symlink to $SRC) and keeps GOCACHE under it, i.e. inside the cache too.
export GOFLAGS='' GO111MODULE=off GOTOOLCHAIN=local
# No .git in a source package: give hack/lib/version.sh the version explicitly.
export KUBE_GIT_VERSION="v$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
log "building cmd/kube-apiserver (nice -n $NICE; GOPATH mode via hack/ scripts)"
build_ts=$(date +%s)
(cd "$SRC" && nice -n "$NICE" make WHAT=cmd/kube-apiserver >&2)
[[ -x $OUT_BIN ]] || OUT_BIN=$(find "$SRC/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
[[ -n $OUT_BIN && -x $OUT_BIN ]] || die "build finished but no kube-apiserver under $SRC/_output"
log "compiled in $(( $(date +%s) - build_ts ))s"

"$OUT_BIN" --version >&2 || die "built binary does not run"
cp "$OUT_BIN" "$BIN.tmp.$$" && chmod 0755 "$BIN.tmp.$$" && mv -f "$BIN.tmp.$$" "$BIN"
echo "$PATCHSET" > "$BIN.patchset"
if [[ ${PORTCULLIS_KEEP_BUILD:-1} == 0 ]]; then rm -rf "$SRC"; fi
log "cached $BIN (total $(( $(date +%s) - start_ts ))s)"
echo "$BIN"
