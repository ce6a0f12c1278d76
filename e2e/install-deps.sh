#!/usr/bin/env bash
# Installs the system packages the test suite uses (Debian/Ubuntu). Idempotent and quiet
# when everything is present. Each line of PACKAGES is "command-to-check debian-package".
set -euo pipefail

PACKAGES=(
  "curl curl"
  "jq jq"
  "openssl openssl"
  "redis-server redis-server"
  "redis-cli redis-tools"
  "kubectl kubectl"
  # Hardening tests: upstream frameworks (Python WSGI, Node) and peers for differential
  # parsing (nginx, HAProxy).
  "python3 python3"
  "node nodejs"
  "nginx nginx"
  "haproxy haproxy"
  # Endpoint tests (e2e/tests/endpoints.rs, ingress.rs): a bridge of the test's own carries
  # the pod addresses (the API server refuses loopback endpoints). Needs root (CAP_NET_ADMIN).
  "ip iproute2"
  # The real single-node Kubernetes (e2e/node/): container runtime, CNI plugins, image
  # builder, the static busybox and gcc for the images, kube-proxy's tools.
  "containerd containerd"
  "runc runc"
  "/usr/lib/cni/bridge containernetworking-plugins"
  "buildah buildah"
  "iptables iptables"
  "conntrack conntrack"
  "/bin/busybox busybox-static"
  "gcc gcc"
  "bc bc"
  # Observability tests: a real Prometheus scrapes the proxy; promtool checks the scrape and
  # the alert rules (proxy/tests/observability.rs, charts/test-chart.sh).
  "prometheus prometheus"
  "promtool prometheus"
)

missing=()
for entry in "${PACKAGES[@]}"; do
  read -r cmd pkg <<<"$entry"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
