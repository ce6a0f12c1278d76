#!/usr/bin/env bash
# Brings up a single-node Kubernetes v1.20.2 in RUN_DIR (as root): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet and kube-proxy, pods on the bridge
# cni0 (10.244.0.0/24), Services in 10.96.0.0/24 through kube-proxy's iptables rules.
#
#   e2e/node/up.sh RUN_DIR NODE_BIN_DIR IMAGE_TAR...
#
# NODE_BIN_DIR comes from ensure-node-bins.sh, the image tars from build-images.sh (the first
# must be the pause image). Writes RUN_DIR/env (KUBECONFIG, ...). Call down.sh RUN_DIR
# afterwards whatever happened (run.sh does it in a trap): a half-started node is torn down
# the same way. Prefer run.sh, which also takes the machine-wide lock.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"

[[ $# -ge 3 ]] || node_die "usage: up.sh RUN_DIR NODE_BIN_DIR PAUSE_TAR [IMAGE_TAR...]"
W=$(realpath "$1"); B=$(realpath "$2"); shift 2
IMAGES=("$@")
[[ $(id -u) -eq 0 ]] || node_die "needs root (bridge, iptables, mounts, containerd)"
P=$W/pki; L=$W/logs; R=$W/run; E=$W/etc
mkdir -p "$P" "$L" "$R" "$E" "$W/cni/net.d" "$W/cni/ipam" "$W/kubelet" "$W/etcd" "$W/manifests"

ts() { date +%s.%N; }
T0=$(ts); t=$T0
lap() { local n; n=$(ts); node_log "$(printf '%-24s %6.2fs' "$1" "$(echo "$n - $t" | bc)")"; t=$n; }
wait_for() { # command, tries (0.2 s apart), what
  local i
  for ((i = 0; i < ${2:-600}; i++)); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  node_die "timed out waiting for ${3:-$1} (logs in $L)"
}
start() { # name, command...: background process with its log and pid file
  local name=$1; shift
  nohup "$@" >"$L/$name.log" 2>&1 &
  echo $! >"$R/$name.pid"
}

ip link show "$BRIDGE" >/dev/null 2>&1 && node_die "bridge $BRIDGE exists: another node is up (or a teardown was skipped: run down.sh on its RUN_DIR)"

read -r ETCD_PORT ETCD_PEER_PORT ETCD_METRICS_PORT API_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT \
  PROXY_HEALTHZ_PORT PROXY_METRICS_PORT CM_PORT SCHED_PORT < <("$HERE/free-ports.py" 10)
cat >"$R/ports" <<E
etcd=$ETCD_PORT apiserver=$API_PORT kubelet=$KUBELET_PORT
E

# --- PKI: a CA, the API server's serving certificate, its client certificate for the kubelet,
# the ServiceAccount signing key and static tokens for the admin and the components.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 30 \
  -subj "/CN=portcullis-node-ca" 2>/dev/null
cat >"$P/apiserver.ext" <<E
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$BRIDGE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
E
openssl req -newkey rsa:2048 -nodes -keyout "$P/apiserver.key" -out "$P/apiserver.csr" -subj "/CN=kube-apiserver" 2>/dev/null
openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
  -out "$P/apiserver.crt" -days 30 -extfile "$P/apiserver.ext" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$P/client.ext"
openssl req -newkey rsa:2048 -nodes -keyout "$P/kubelet-client.key" -out "$P/kubelet-client.csr" \
  -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
openssl x509 -req -in "$P/kubelet-client.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
  -out "$P/kubelet-client.crt" -days 30 -extfile "$P/client.ext" 2>/dev/null
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
tok() { openssl rand -hex 16; }
declare -A TOKENS=([admin]=$(tok) [kubelet]=$(tok) [kube-proxy]=$(tok) [controller-manager]=$(tok) [scheduler]=$(tok))
cat >"$P/tokens.csv" <<E
${TOKENS[admin]},admin,1,"system:masters"
${TOKENS[kubelet]},system:node:$NODE_NAME,2,"system:nodes"
${TOKENS[kube-proxy]},system:kube-proxy,3
${TOKENS[controller-manager]},system:kube-controller-manager,4
${TOKENS[scheduler]},system:kube-scheduler,5
E
chmod 600 "$P"/*.key "$P/tokens.csv"
for who in "${!TOKENS[@]}"; do
  cat >"$P/$who.kubeconfig" <<E
apiVersion: v1
kind: Config
clusters:
- name: $NODE_NAME
  cluster: {server: "https://$BRIDGE_IP:$API_PORT", certificate-authority: $P/ca.crt}
users:
- name: $who
  user: {token: ${TOKENS[$who]}}
contexts:
- name: $NODE_NAME
  context: {cluster: $NODE_NAME, user: $who, namespace: default}
current-context: $NODE_NAME
E
  chmod 600 "$P/$who.kubeconfig"
done
export KUBECONFIG=$P/admin.kubeconfig
lap "pki"

# --- network: the bridge (created here so the API server and the kubelet can bind to it),
# the service range routed onto it, and the guard rules, all before any component starts.
for d in "${HOST_DIRS[@]}"; do [[ -e $d ]] || echo "$d"; done >"$R/host-dirs.created"
for k in "${NODE_SYSCTLS[@]}"; do
  [[ -e /proc/sys/$k ]] && echo "$k=$(cat "/proc/sys/$k")"
done >"$R/sysctl.orig"
ip link add "$BRIDGE" type bridge
ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"
guard() { iptables -w "$@" -m comment --comment "$GUARD_COMMENT"; }
# The uplinks: the interfaces of the default routes (and eth0 when present).
UPLINKS=$( { ip -4 route show default; ip -6 route show default; } 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}')
ip link show eth0 >/dev/null 2>&1 && UPLINKS+=" eth0"
UPLINKS=$(tr ' ' '\n' <<<"$UPLINKS" | sort -u | grep -v '^$' || true)
[[ -n $UPLINKS ]] || node_die "no uplink found for the guard rules"
echo "$UPLINKS" >"$R/uplinks"
for dev in $UPLINKS; do
  # Nothing a pod or a Service sends is forwarded or routed out of the machine.
  guard -I FORWARD -o "$dev" -j DROP
  guard -I OUTPUT -o "$dev" -d 10.96.0.0/12 -j DROP
  guard -I OUTPUT -o "$dev" -d "$CLUSTER_CIDR" -j DROP
done
# kubelet 1.20's in-tree cloud credential providers probe the metadata address.
guard -I OUTPUT -d 169.254.169.254/32 -j REJECT
guard -I FORWARD -d 169.254.169.254/32 -j REJECT
cat >"$W/cni/net.d/10-portcullis.conflist" <<E
{
  "cniVersion": "0.4.0",
  "name": "portcullis-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$W/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
E
# No cluster DNS: pods find Services through their environment variables.
printf 'nameserver 127.0.0.1\n' >"$E/pod-resolv.conf"
lap "bridge + guard rules"

# --- containerd, with the images imported (nothing is ever pulled)
PAUSE_IMAGE=$(tar -xOf "${IMAGES[0]}" manifest.json | jq -r '.[0].RepoTags[0]')
cat >"$E/containerd.toml" <<E
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
oom_score = 0
[grpc]
  address = "$W/containerd/containerd.sock"
[ttrpc]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$W/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    # No CAP_SYS_RESOURCE in a container: runc cannot set the pause's negative oom_score_adj.
    restrict_oom_score_adj = true
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$W/cni/net.d"
E
start containerd containerd --config "$E/containerd.toml"
CTR="ctr -a $W/containerd/containerd.sock -n k8s.io"
wait_for "$CTR version" 150 containerd
lap "containerd"
for tar in "${IMAGES[@]}"; do $CTR images import "$tar" >/dev/null; done
lap "image import (${#IMAGES[@]})"

# --- control plane
start etcd etcd --name "$NODE_NAME" --data-dir "$W/etcd/data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT"
wait_for "curl -sf http://127.0.0.1:$ETCD_PORT/health" 300 etcd
lap "etcd"
# Advertises (and binds) the bridge address: the kubernetes Service's endpoint must be
# reachable from pods, and Endpoints cannot hold loopback addresses.
start kube-apiserver "$B/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$BRIDGE_IP" --secure-port="$API_PORT" --advertise-address="$BRIDGE_IP" --insecure-port=0 \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --authorization-mode=Node,RBAC \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --kubelet-client-certificate="$P/kubelet-client.crt" --kubelet-client-key="$P/kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=false
wait_for "kubectl get --raw /readyz" 600 kube-apiserver
lap "kube-apiserver"
start kube-controller-manager "$B/kube-controller-manager" --kubeconfig="$P/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$P/controller-manager.kubeconfig" --authorization-kubeconfig="$P/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$CM_PORT" --port=0 --leader-elect=false \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$CLUSTER_CIDR" --allocate-node-cidrs=false \
  --controllers='*,-cloud-node-lifecycle'
start kube-scheduler "$B/kube-scheduler" --kubeconfig="$P/scheduler.kubeconfig" \
  --authentication-kubeconfig="$P/scheduler.kubeconfig" --authorization-kubeconfig="$P/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --port=0 --leader-elect=false

# --- kubelet and kube-proxy (the guard rules are already in place)
cat >"$E/kubelet-config.yaml" <<E
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: $E/pod-resolv.conf
clusterDomain: cluster.local
staticPodPath: $W/manifests
# A busy CI disk must not evict the test's pods.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
E
cat >"$E/kube-proxy-config.yaml" <<E
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $P/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
E
# AWS_EC2_METADATA_DISABLED: kubelet 1.20's in-tree ECR credential provider otherwise
# connects to 169.254.169.254 at start-up.
start kubelet env AWS_EC2_METADATA_DISABLED=true "$B/kubelet" --config="$E/kubelet-config.yaml" \
  --kubeconfig="$P/kubelet.kubeconfig" \
  --container-runtime=remote --container-runtime-endpoint="unix://$W/containerd/containerd.sock" \
  --pod-infra-container-image="$PAUSE_IMAGE" \
  --root-dir="$W/kubelet" --cert-dir="$W/kubelet/pki" \
  --hostname-override="$NODE_NAME" --node-ip="$BRIDGE_IP" --register-node=true
start kube-proxy "$B/kube-proxy" --config="$E/kube-proxy-config.yaml"
wait_for "kubectl get sa default -o jsonpath='{.secrets[0].name}' | grep -q token" 600 "the default ServiceAccount's token"
wait_for "kubectl get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" 600 "node Ready"
lap "node Ready"

IMAGE_NAMES=()
for tar in "${IMAGES[@]}"; do IMAGE_NAMES+=("$(tar -xOf "$tar" manifest.json | jq -r '.[0].RepoTags[0]')"); done
cat >"$W/env" <<E
export PORTCULLIS_NODE_DIR=$W
export KUBECONFIG=$P/admin.kubeconfig
export PORTCULLIS_NODE_NAME=$NODE_NAME
export PORTCULLIS_NODE_APISERVER=https://$BRIDGE_IP:$API_PORT
export PORTCULLIS_NODE_CTR="$CTR"
export PORTCULLIS_NODE_IMAGES="${IMAGE_NAMES[*]}"
E
node_log "$(printf '%-24s %6.2fs' "node up" "$(echo "$(ts) - $T0" | bc)")"
