#!/usr/bin/env bash
# Runs the whole Portcullis test suite: unit, golden and proxy integration tests over real
# sockets. This is the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from https://rustup.rs" >&2
  exit 1
fi

./e2e/install-deps.sh

# The Helm chart, without a cluster (charts/test-chart.sh installs helm-python-sdk and promtool).
echo "== chart: lint, render, rules"
./charts/test-chart.sh

echo "== building the binaries the end-to-end tests run as processes"
cargo build --workspace --bins --locked

echo "== test control plane: kube-apiserver (built once from Debian's source, then cached)"
./e2e/env/ensure-apiserver.sh >/dev/null

echo "== cargo test --workspace"
cargo test --workspace --all-targets --locked

# The vendored libinjectionrs is patched by us (vendor/libinjectionrs/PORTCULLIS.md) and is not a
# workspace member: its unit tests (keyword and XSS name tables against the original lookups) run here.
echo "== cargo test -p libinjectionrs (vendored, patched)"
cargo test -p libinjectionrs --locked

# Parsers of hostile input under cargo fuzz (issue #19, docs/fuzzing.md): every target built
# once on nightly, then FUZZ_SECONDS (default 20) each from its committed seed corpus.
# The nightly build of the proxy's dependency tree is most of the step's time: it is kept
# next to the kube-apiserver cache, so later runs on this machine rebuild only our crates.
echo "== fuzz smoke runs"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${PORTCULLIS_CACHE:-/var/cache/portcullis}/fuzz-target}" ./fuzz/smoke.sh

# The Helm chart on a real single-node Kubernetes (e2e/node/README.md): kubelet, kube-proxy,
# containerd and the control plane on this machine, the images built FROM scratch from the
# release binaries. The first run builds the node binaries (cached) and the release binaries.
echo "== chart on a real node (helm install, webhook, rolling upgrade under load, failover, RBAC, uninstall)"
./e2e/node/chart-test.sh
