#!/usr/bin/env bash
# Tears down the node up.sh started in RUN_DIR, also a half-started one, and then checks that
# nothing is left: no process, mount, network namespace, bridge, iptables rule or chain, pod
# cgroup or kubelet/CNI state outside RUN_DIR. Exits 1 (listing what is left) otherwise.
#
#   e2e/node/down.sh RUN_DIR      # idempotent; RUN_DIR/logs stays, the rest of RUN_DIR goes
#
# Order matters: pods (the kubelet stops its sandboxes itself: CNI DEL, netns, shm), then
# kube-proxy, kubelet and the controllers, containerd, the control plane, and last the host
# state they changed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
[[ $# -eq 1 && -d $1 ]] || node_die "usage: down.sh RUN_DIR"
W=$(realpath "$1"); R=$W/run
export KUBECONFIG=$W/pki/admin.kubeconfig
CTR="ctr -a $W/containerd/containerd.sock -n k8s.io"

alive() { [[ -f $R/$1.pid ]] && kill -0 "$(<"$R/$1.pid")" 2>/dev/null; }
stop() { # name: SIGTERM the recorded pid, SIGKILL after 15 s
  local f=$R/$1.pid p i
  [[ -f $f ]] || return 0
  p=$(<"$f")
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null
    for ((i = 0; i < 75; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && { node_log "$1 ignored SIGTERM; SIGKILL"; kill -9 "$p" 2>/dev/null; sleep 0.2; }
  fi
  rm -f "$f"
}

if alive kube-apiserver && alive kubelet; then
  node_log "deleting every workload and pod (the kubelet stops the sandboxes)"
  timeout 30 kubectl delete deploy,rs,sts,ds,job,cronjob --all -A --wait=false >/dev/null 2>&1
  timeout 30 kubectl delete pod --all -A --force --grace-period=0 >/dev/null 2>&1
  for ((i = 0; i < 60; i++)); do [[ -z $($CTR tasks ls -q 2>/dev/null) ]] && break; sleep 0.5; done
fi
stop kube-proxy
for b in "$CACHE"/node-*/kube-proxy; do [[ -x $b ]] && { "$b" --cleanup >/dev/null 2>&1; break; }; done
stop kubelet
stop kube-scheduler
stop kube-controller-manager
if alive containerd; then
  for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 0.5
  for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks rm -f "$t" >/dev/null 2>&1; done
  for c in $($CTR containers ls -q 2>/dev/null); do $CTR containers rm "$c" >/dev/null 2>&1; done
fi
stop containerd
# Shims of this containerd (normally gone with their containers).
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $W/containerd/containerd.sock"); do kill -9 "$p" 2>/dev/null; done
stop kube-apiserver
stop etcd
# Anything still in a pod cgroup is a container process of ours.
for procs in $(find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs 2>/dev/null); do
  for p in $(cat "$procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
done
# Any other process naming the run folder (a component started before its pid file was written).
for p in $(pgrep -f -- "$W/"); do [[ $p != $$ ]] && kill -9 "$p" 2>/dev/null; done
sleep 0.3

# Mounts: the kubelet's root dir, secret/projected tmpfs, container rootfs overlays, sandbox
# shm, network namespaces. Deepest first.
for m in $(findmnt -rn -o TARGET | grep -E "^$W/|^/run/netns/cni-|^/run/containerd/" | sort -r); do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done
rm -f /run/netns/cni-*

# iptables: every rule naming a KUBE- or CNI- chain or carrying our guard comment, then those chains.
for ipt in iptables ip6tables; do
  for t in filter nat mangle raw; do
    $ipt -w -t $t -S 2>/dev/null | grep -E "^-A .*(KUBE-|CNI-|$GUARD_COMMENT)" | sed 's/^-A/-D/' |
      while read -r rule; do eval "$ipt -w -t $t $rule" 2>/dev/null; done
    for ch in $($ipt -w -t $t -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/{print $2}'); do $ipt -w -t $t -F "$ch" 2>/dev/null; done
    for ch in $($ipt -w -t $t -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/{print $2}'); do $ipt -w -t $t -X "$ch" 2>/dev/null; done
  done
done
ip link del "$BRIDGE" 2>/dev/null
for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  [[ $(ip -o link show "$v" 2>/dev/null) == *"master $BRIDGE"* ]] && ip link del "$v" 2>/dev/null
done

if [[ -f $R/sysctl.orig ]]; then
  while IFS='=' read -r k v; do [[ -n $v ]] && echo "$v" >"/proc/sys/$k" 2>/dev/null; done <"$R/sysctl.orig"
fi
# State the kubelet, containerd and libcni keep outside RUN_DIR.
rm -rf /var/log/pods /var/log/containers /var/lib/cni
created=()
[[ -f $R/host-dirs.created ]] && mapfile -t created <"$R/host-dirs.created"
for d in "${created[@]}"; do [[ -n $d ]] && rm -rf "$d"; done
pgrep -x containerd >/dev/null || rm -rf /run/containerd
# Pod cgroups (empty now), deepest first.
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [[ -d $h ]] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# The run folder but its logs (containerd's snapshots are most of its size).
find "$W" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null

# --- what is left?
left=()
p=$(pgrep -f -- "$W/" | grep -vx "$$" || true); [[ -n $p ]] && left+=("processes naming $W: $p")
# (kube-apiserver and etcd name $W in their arguments; other tests on the machine run their own.)
p=$(for n in containerd-shim kubelet kube-proxy kube-scheduler kube-controller; do pgrep -x $n; done || true)
[[ -n $p ]] && left+=("node processes: $(ps -o pid=,args= -p "$(tr '\n' ',' <<<"$p" | sed 's/,$//')" | cut -c1-120)")
m=$(findmnt -rn -o TARGET | grep -E "^$W/|^/run/netns/cni-|^/run/containerd/" || true); [[ -n $m ]] && left+=("mounts: $m")
ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
compgen -G '/run/netns/cni-*' >/dev/null && left+=("netns: $(ls /run/netns/)")
for ipt in iptables ip6tables iptables-legacy ip6tables-legacy; do
  command -v $ipt >/dev/null || continue
  for t in filter nat mangle raw; do
    r=$($ipt -w -t $t -S 2>/dev/null | grep -E "KUBE-|CNI-|$GUARD_COMMENT" || true)
    [[ -n $r ]] && left+=("$ipt -t $t: $r")
  done
done
c=$(find /sys/fs/cgroup -maxdepth 2 -type d -name kubepods 2>/dev/null); [[ -n $c ]] && left+=("cgroups: $c")
for d in /var/log/pods /var/log/containers /var/lib/cni /run/containerd "${created[@]}"; do
  [[ -n $d && -e $d ]] && left+=("$d")
done
if ((${#left[@]})); then
  node_log "teardown left behind:"; printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
node_log "node down; nothing left behind (logs in $W/logs)"
