#!/usr/bin/env bash
# The Helm chart on a real single-node Kubernetes: run.sh brings the node up, runs
# tests/chart_on_node.py (helm-python-sdk from the venv charts/test-chart.sh installs) and
# tears the node down. Called by e2e/test-all.sh after charts/test-chart.sh; as root.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${PORTCULLIS_CACHE:-/var/cache/portcullis}/chart-venv
"$VENV/bin/python" -c 'import helm_python, yaml' 2>/dev/null \
  || { echo "no helm-python-sdk in $VENV: run charts/test-chart.sh first" >&2; exit 1; }
exec "$HERE/run.sh" "$VENV/bin/python" "$HERE/tests/chart_on_node.py"
