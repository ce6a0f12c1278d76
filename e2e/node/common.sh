# Shared by up.sh, down.sh and run.sh (sourced, not run). The node's fixed network: only one
# real node can exist on a machine at a time (run.sh takes $NODE_LOCK).
NODE_NAME=portcullis-node
BRIDGE=cni0
BRIDGE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
# Every iptables rule we add carries this comment, so teardown finds exactly ours.
GUARD_COMMENT=portcullis-node-guard
NODE_LOCK=${PORTCULLIS_NODE_LOCK:-/run/lock/portcullis-node.lock}
CACHE=${PORTCULLIS_CACHE:-/var/cache/portcullis}
# Sysctls kubelet, kube-proxy and the bridge plugin change; teardown restores them.
NODE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward
  net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables)

# Directories the kubelet (device plugins) and containerd's CNI (its lock) create outside the
# run folder whatever their configuration says: removed by teardown when up.sh created them.
HOST_DIRS=(/var/lib/kubelet /etc/cni)

node_log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
node_die() { node_log "ERROR: $*"; exit 1; }
