#!/usr/bin/env bash
# Checks the Helm chart without a cluster: helm lint, renders (defaults, ci/all-on-values.yaml and
# variants), the CRD copy against crds/manifests/, values.schema.json refusing bad values, RBAC
# least privilege on the rendered Roles, and the alert rules with promtool (check + unit test).
# Installs what it needs: helm-python-sdk (Helm v4's SDK, no helm binary) and PyYAML in a venv
# kept in the cache, Debian's prometheus package for promtool. Called by e2e/test-all.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${PORTCULLIS_CACHE:-/var/cache/portcullis}"
VENV="$CACHE/chart-venv"
HELM_SDK_VERSION=0.2.2

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

if ! "$VENV/bin/python" -c "import helm_python, yaml, sys; sys.exit(helm_python.__version__ != '$HELM_SDK_VERSION')" 2>/dev/null; then
  echo "== installing helm-python-sdk $HELM_SDK_VERSION and PyYAML into $VENV"
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "helm-python-sdk==$HELM_SDK_VERSION" "pyyaml>=6"
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  $SUDO apt-get update -qq
  # policy-rc.d / no init in containers: the package's service is not started.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

exec "$VENV/bin/python" charts/check-chart.py
