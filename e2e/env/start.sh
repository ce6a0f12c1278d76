#!/usr/bin/env bash
# Start a throw-away Kubernetes control plane for Portcullis' e2e tests, envtest-style:
# etcd + kube-apiserver on free loopback ports, no kubelet, no controller-manager.
#
#   e2e/env/start.sh STATEDIR        # then: source STATEDIR/env ... e2e/env/stop.sh STATEDIR
#
# Writes into STATEDIR (created if needed; etcd data from a previous run is wiped):
#   kubeconfig            admin (user "admin", group system:masters)
#   kubeconfig-operator   static token for system:serviceaccount:$NS:portcullis-operator
#   kubeconfig-proxy      static token for system:serviceaccount:$NS:portcullis-proxy
#   kubeconfig-tenant-a   static token for the user tenant-a (no group; no rights until bound)
#   kubeconfig-tenant-b   static token for the user tenant-b (likewise)
#   env                   shell exports (KUBECONFIG, APISERVER_URL, ADMIN_TOKEN, pids, ...)
#   etcd.pid apiserver.pid etcd.log apiserver.log pki/ etcd/ certs/ tokens.csv
# The operator/proxy identities carry ServiceAccount user names and groups
# (system:serviceaccounts, system:serviceaccounts:$NS), so RoleBindings/ClusterRoleBindings to
# those ServiceAccounts -- i.e. the chart's RBAC -- apply to them exactly as in a cluster.
#
# If $KUBECONFIG is set and its cluster answers /readyz, nothing is started: STATEDIR/env
# points at it (PORTCULLIS_ENV_MODE=external; no kubeconfig-operator/-proxy, no tokens).
# Set PORTCULLIS_IGNORE_KUBECONFIG=1 to always start a local control plane.
#
# Environment (all optional):
#   PORTCULLIS_NAMESPACE       namespace of the operator/proxy ServiceAccounts (portcullis-system)
#   PORTCULLIS_OPERATOR_SA     operator ServiceAccount name (portcullis-operator)
#   PORTCULLIS_PROXY_SA        proxy ServiceAccount name (portcullis-proxy)
#   PORTCULLIS_APISERVER_BIN   kube-apiserver to use (default: ensure-apiserver.sh, may build!)
#   PORTCULLIS_ETCD_BIN        etcd to use (default: $KUBEBUILDER_ASSETS/etcd, else etcd on PATH)
#   PORTCULLIS_START_TIMEOUT   seconds to wait for readiness (default 120)
#   PORTCULLIS_APISERVER_ARGS  extra kube-apiserver flags (word-split)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -eq 1 ]] || { echo "usage: $0 STATEDIR" >&2; exit 2; }
mkdir -p "$1"
STATE=$(cd "$1" && pwd -P)
NS=${PORTCULLIS_NAMESPACE:-portcullis-system}
OPERATOR_SA=${PORTCULLIS_OPERATOR_SA:-portcullis-operator}
PROXY_SA=${PORTCULLIS_PROXY_SA:-portcullis-proxy}
TIMEOUT=${PORTCULLIS_START_TIMEOUT:-120}

log() { printf '[e2e-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
q() { printf '%q' "$1"; }

# --- an existing cluster ----------------------------------------------------------------
if [[ -n "${KUBECONFIG:-}" && "${PORTCULLIS_IGNORE_KUBECONFIG:-0}" != 1 ]]; then
  if kubectl --request-timeout=5s get --raw=/readyz >/dev/null 2>&1; then
    url=$(kubectl config view --minify -o 'jsonpath={.clusters[0].cluster.server}')
    log "KUBECONFIG=$KUBECONFIG is reachable ($url): using it, starting nothing"
    {
      echo "# written by e2e/env/start.sh: external cluster, nothing started"
      echo "export PORTCULLIS_ENV_MODE=external"
      echo "export PORTCULLIS_STATEDIR=$(q "$STATE")"
      echo "export KUBECONFIG=$(q "$KUBECONFIG")"
      echo "export APISERVER_URL=$(q "$url")"
    } > "$STATE/env"
    exit 0
  fi
  log "KUBECONFIG=$KUBECONFIG is set but not reachable; starting a local control plane"
fi

# --- binaries ---------------------------------------------------------------------------
APISERVER=${PORTCULLIS_APISERVER_BIN:-$("$HERE/ensure-apiserver.sh")}
[[ -x $APISERVER ]] || die "kube-apiserver not executable: $APISERVER"
if [[ -n "${PORTCULLIS_ETCD_BIN:-}" ]]; then ETCD=$PORTCULLIS_ETCD_BIN
elif [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then ETCD=$KUBEBUILDER_ASSETS/etcd
elif command -v etcd >/dev/null; then ETCD=$(command -v etcd)
elif [[ $(id -u) -eq 0 ]]; then
  log "no etcd on PATH: installing Debian's etcd-server"
  { apt-get install -y -qq --no-install-recommends etcd-server || { apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server; }; } >&2
  ETCD=$(command -v etcd) || die "etcd-server installed but no etcd on PATH"
else die "no etcd on PATH: apt-get install etcd-server"
fi
for t in openssl curl kubectl; do command -v $t >/dev/null || die "$t not found"; done

# --- leftovers from an earlier run in the same STATEDIR ---------------------------------
if [[ -f $STATE/etcd.pid || -f $STATE/apiserver.pid ]]; then
  log "stopping processes left by an earlier run in $STATE"
  "$HERE/stop.sh" "$STATE"
fi
rm -rf "$STATE/etcd" "$STATE/certs" "$STATE/pki"
rm -f "$STATE"/kubeconfig* "$STATE/env" "$STATE/tokens.csv" "$STATE"/*.log
mkdir -p "$STATE/etcd" "$STATE/certs" "$STATE/pki"
chmod 700 "$STATE/etcd" "$STATE/pki"

# If anything below fails, stop what was started (never leak processes).
started_ok=0
cleanup() { if [[ $started_ok != 1 ]]; then log "start failed; stopping"; "$HERE/stop.sh" "$STATE" || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
t0=$(date +%s.%N)

# --- ports ------------------------------------------------------------------------------
# Random ports below Linux's ephemeral range (32768+) so outgoing connections cannot take them
# between the check and the bind; a port is free if nothing accepts a connection on it.
declare -A taken=()
free_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
    [[ -n ${taken[$p]:-} ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then taken[$p]=1; echo "$p"; return 0; fi
  done
  return 1
}

# --- PKI: serving CA + cert (verifiable by kubectl and rustls), SA key, tokens -------------
PKI=$STATE/pki
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=portcullis-e2e-ca" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 30 -out "$PKI/apiserver.crt" -extfile <(printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1") 2>/dev/null
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

ADMIN_TOKEN=$(openssl rand -hex 24)
OPERATOR_TOKEN=$(openssl rand -hex 24)
PROXY_TOKEN=$(openssl rand -hex 24)
TENANT_A_TOKEN=$(openssl rand -hex 24)
TENANT_B_TOKEN=$(openssl rand -hex 24)
OPERATOR_USER="system:serviceaccount:$NS:$OPERATOR_SA"
PROXY_USER="system:serviceaccount:$NS:$PROXY_SA"
SA_GROUPS="system:serviceaccounts,system:serviceaccounts:$NS"
: > "$STATE/tokens.csv"; chmod 600 "$STATE/tokens.csv"
cat > "$STATE/tokens.csv" <<TOK
$ADMIN_TOKEN,admin,admin,"system:masters"
$OPERATOR_TOKEN,$OPERATOR_USER,portcullis-e2e-operator,"$SA_GROUPS"
$PROXY_TOKEN,$PROXY_USER,portcullis-e2e-proxy,"$SA_GROUPS"
$TENANT_A_TOKEN,tenant-a,portcullis-e2e-tenant-a
$TENANT_B_TOKEN,tenant-b,portcullis-e2e-tenant-b
TOK

# --- etcd -------------------------------------------------------------------------------
# Started as `bash -c 'echo $$ > pidfile; exec ...'` so the pid file holds the server's own pid.
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port)
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
bash -c 'echo $$ > "$0"; exec "$@"' "$STATE/etcd.pid" "$ETCD" \
  --name portcullis-e2e --data-dir "$STATE/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "portcullis-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state new --logger zap --log-outputs stderr --log-level warn \
  </dev/null >"$STATE/etcd.log" 2>&1 &
wait_pidfile() { local _; for _ in $(seq 1 100); do [[ -s $1 ]] && return 0; sleep 0.05; done; die "no $1"; }
wait_pidfile "$STATE/etcd.pid"; ETCD_PID=$(<"$STATE/etcd.pid")
log "etcd pid $ETCD_PID on $ETCD_URL"
deadline=$(( $(date +%s) + TIMEOUT ))
until curl -fsS --max-time 2 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'; do
  kill -0 "$ETCD_PID" 2>/dev/null || { tail -n 30 "$STATE/etcd.log" >&2; die "etcd exited"; }
  (( $(date +%s) < deadline )) || { tail -n 30 "$STATE/etcd.log" >&2; die "etcd not healthy after ${TIMEOUT}s"; }
  sleep 0.2
done

# --- kube-apiserver ---------------------------------------------------------------------
API_PORT=$(free_port)
# --insecure-port=0: 1.20 still opens an unauthenticated HTTP port (default 127.0.0.1:8080)
# otherwise; the flag is gone since 1.24 (a newer envtest kube-apiserver rejects it).
version_args=()
minor=$("$APISERVER" --version 2>/dev/null | sed -n 's/^Kubernetes v1\.\([0-9]*\).*/\1/p')
if [[ -z $minor || $minor -lt 24 ]]; then version_args+=(--insecure-port=0); fi
APISERVER_URL="https://127.0.0.1:$API_PORT"
# ServiceAccount admission is off as in envtest: no controller-manager creates the `default`
# ServiceAccount, so pods would be rejected.
# The launch command is kept as a script so that restart-apiserver.sh can bring the same
# server (same port, certs and etcd data) back after a test stops it.
{
  echo '#!/usr/bin/env bash'
  printf 'exec bash -c %q %q %q' 'echo $$ > "$0"; exec "$@"' "$STATE/apiserver.pid" "$APISERVER"
  for arg in \
    --etcd-servers="$ETCD_URL" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" "${version_args[@]}" \
    --cert-dir="$STATE/certs" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --token-auth-file="$STATE/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=true \
    ${PORTCULLIS_APISERVER_ARGS:-}; do
    printf ' %q' "$arg"
  done
  echo
} > "$STATE/run-apiserver.sh"
chmod +x "$STATE/run-apiserver.sh"
# shellcheck disable=SC2086
"$STATE/run-apiserver.sh" </dev/null >"$STATE/apiserver.log" 2>&1 &
wait_pidfile "$STATE/apiserver.pid"; APISERVER_PID=$(<"$STATE/apiserver.pid")
log "kube-apiserver pid $APISERVER_PID on $APISERVER_URL ($APISERVER)"

# Ready = /readyz is ok and the `default` namespace exists (created by a bootstrap controller
# shortly after the server starts serving).
api() { curl -fsS --max-time 3 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$APISERVER_URL$1"; }
until [[ $(api /readyz 2>/dev/null) == ok ]] && api /api/v1/namespaces/default >/dev/null 2>&1; do
  kill -0 "$APISERVER_PID" 2>/dev/null || { tail -n 40 "$STATE/apiserver.log" >&2; die "kube-apiserver exited"; }
  kill -0 "$ETCD_PID" 2>/dev/null || { tail -n 30 "$STATE/etcd.log" >&2; die "etcd exited"; }
  (( $(date +%s) < deadline )) || { api '/readyz?verbose' >&2 || true; tail -n 40 "$STATE/apiserver.log" >&2; die "kube-apiserver not ready after ${TIMEOUT}s"; }
  sleep 0.25
done

# --- kubeconfigs + env ------------------------------------------------------------------
CA_DATA=$(base64 -w0 < "$PKI/ca.crt")
write_kubeconfig() { # file user token namespace
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: portcullis-e2e
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $CA_DATA
users:
- name: $2
  user:
    token: $3
contexts:
- name: portcullis-e2e
  context:
    cluster: portcullis-e2e
    user: $2
    namespace: $4
current-context: portcullis-e2e
KC
  chmod 600 "$1"
}
write_kubeconfig "$STATE/kubeconfig" admin "$ADMIN_TOKEN" default
write_kubeconfig "$STATE/kubeconfig-operator" "$OPERATOR_SA" "$OPERATOR_TOKEN" "$NS"
write_kubeconfig "$STATE/kubeconfig-proxy" "$PROXY_SA" "$PROXY_TOKEN" "$NS"
write_kubeconfig "$STATE/kubeconfig-tenant-a" tenant-a "$TENANT_A_TOKEN" ten-a
write_kubeconfig "$STATE/kubeconfig-tenant-b" tenant-b "$TENANT_B_TOKEN" ten-b

{
  echo "# written by e2e/env/start.sh; stop with: e2e/env/stop.sh $(q "$STATE")"
  echo "export PORTCULLIS_ENV_MODE=local"
  echo "export PORTCULLIS_STATEDIR=$(q "$STATE")"
  echo "export KUBECONFIG=$(q "$STATE/kubeconfig")"
  echo "export KUBECONFIG_OPERATOR=$(q "$STATE/kubeconfig-operator")"
  echo "export KUBECONFIG_PROXY=$(q "$STATE/kubeconfig-proxy")"
  echo "export APISERVER_URL=$(q "$APISERVER_URL")"
  echo "export APISERVER_CA=$(q "$PKI/ca.crt")"
  echo "export ADMIN_TOKEN=$(q "$ADMIN_TOKEN")"
  echo "export OPERATOR_TOKEN=$(q "$OPERATOR_TOKEN")"
  echo "export OPERATOR_USER=$(q "$OPERATOR_USER")"
  echo "export PROXY_TOKEN=$(q "$PROXY_TOKEN")"
  echo "export PROXY_USER=$(q "$PROXY_USER")"
  echo "export PORTCULLIS_NAMESPACE=$(q "$NS")"
  echo "export ETCD_URL=$(q "$ETCD_URL")"
  echo "export ETCD_PID=$ETCD_PID"
  echo "export APISERVER_PID=$APISERVER_PID"
} > "$STATE/env"
chmod 600 "$STATE/env"   # holds the tokens

started_ok=1
log "ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s: source $STATE/env"
