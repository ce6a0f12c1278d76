#!/usr/bin/env bash
# Instructions per request of the WAF engine (bench/waf-engine.rs), per case, counted by
# callgrind: unlike wall time, the count does not move with the neighbours' load, so it is
# the number to compare before/after a change on the shared machine.
#
# Each case runs twice under callgrind (N1 and N2 iterations); the difference of the two
# totals divided by the difference of the call counts cancels start-up and the engine build
# (regex compilation), leaving the steady-state cost of one `Engine::inspect`.
#
#   bench/waf-instructions.sh                 # all four cases
#   CASES="json" bench/waf-instructions.sh    # one case (substring of the case name)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CASES=${CASES:-"get, 4 args|1 kib json|attack get|attack post"}
N1=${N1:-160}
N2=${N2:-480}
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
BIN=$(cd "$ROOT" && cargo bench -p portcullis-waf --bench waf-engine --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "waf-engine":
        print(m["executable"])')
[[ -x $BIN ]] || { echo "could not build the waf-engine bench" >&2; exit 1; }
# Calls of `run` for one case in waf-engine.rs: 1 + iters/10 (warm-up) + (iters/16)*16.
calls() { echo $((1 + $1 / 10 + ($1 / 16) * 16)); }
instructions() { # case iters
    WAF_BENCH_CASE=$1 WAF_BENCH_ITERS=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$BIN" 2>&1 >/dev/null | awk '/Collected :/ { print $NF }'
}
echo "| case | instructions/request |"
echo "|---|---|"
IFS='|' read -ra list <<<"$CASES"
for c in "${list[@]}"; do
    a=$(instructions "$c" "$N1")
    b=$(instructions "$c" "$N2")
    per=$(( (b - a) / ($(calls "$N2") - $(calls "$N1")) ))
    echo "| $c | $per |"
done
