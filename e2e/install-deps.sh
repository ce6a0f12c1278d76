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
