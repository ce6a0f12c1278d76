#!/usr/bin/env bash
# Stop the control plane that e2e/env/start.sh started in STATEDIR: kube-apiserver first, then
# etcd; SIGTERM, then SIGKILL after PORTCULLIS_STOP_TIMEOUT seconds (default 3; tests need no graceful shutdown); returns only
# when both are gone.  Idempotent; does nothing for an external cluster.  Keeps STATEDIR (logs,
# etcd data) -- remove it yourself.
#
#   e2e/env/stop.sh STATEDIR
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 STATEDIR" >&2; exit 2; }
[[ -d $1 ]] || exit 0
STATE=$(cd "$1" && pwd -P)
TIMEOUT=${PORTCULLIS_STOP_TIMEOUT:-3}
log() { printf '[e2e-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_one() { # name
  local name=$1 pidfile="$STATE/$1.pid" pid i
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  # Only signal the process if it is still the one we started (its command line names
  # STATEDIR): the pid may have been reused since.
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
     && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE"; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < TIMEOUT * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      # a zombie (our own child, e.g. when start.sh cleans up after itself) counts as gone
      [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
      log "$name (pid $pid) ignored SIGTERM for ${TIMEOUT}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do sleep 0.1; done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

stop_one apiserver
# restart-apiserver.sh stops only the API server and keeps etcd (and its data) running.
[[ ${PORTCULLIS_STOP_ONLY:-} == apiserver ]] || stop_one etcd
exit 0
