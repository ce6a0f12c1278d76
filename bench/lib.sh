# Shell helpers shared by the bench scripts (sourced, not run).

# A loopback TCP port nothing listens on (random in 20000-31999, so that parallel runs
# rarely pick the same one).
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    echo "no free port" >&2
    exit 1
}

# Stops every process in the PIDS array and waits for them (for the scripts' EXIT traps).
stop_pids() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
