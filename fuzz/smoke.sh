#!/usr/bin/env bash
# Smoke-fuzzes every cargo-fuzz target (issue #19): builds them all once, then runs each for
# FUZZ_SECONDS (default 20, at most 60) from its committed seed corpus, one line per target.
# Exits non-zero when any target crashes, fails a property, or times out on one input.
# A long run of one target is `cargo +nightly fuzz run <target> -- -max_total_time=3600`
# (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "FUZZ_SECONDS must be a whole number of seconds, got '$seconds'" >&2
  exit 2
fi
if [ "$seconds" -gt 60 ]; then
  # The smoke run is part of CI's time budget; long runs are run by hand.
  echo "FUZZ_SECONDS=$seconds capped at 60 (run long campaigns with cargo fuzz run directly)"
  seconds=60
fi
# No sanitizer by default: the workspace forbids `unsafe`, so AddressSanitizer would mostly
# watch our dependencies, and it makes the nightly build of the proxy's dependency tree
# slower on CI's two cores. FUZZ_SANITIZER=address for a run that wants it.
sanitizer="${FUZZ_SANITIZER:-none}"
# Sixteen codegen units per crate instead of cargo fuzz's one: the two cores stay busy.
# FUZZ_TARGET_DIR keeps the nightly build outside the checkout (test-all.sh points it at the
# machine's cache), so a fresh clone on the same machine rebuilds only our three crates.
build_flags="--codegen-units 16"
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  build_flags="$build_flags --target-dir $FUZZ_TARGET_DIR"
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "the nightly toolchain is required (cargo fuzz builds with -Z flags)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

started=$(date +%s)
echo "== building the fuzz targets (nightly, sanitizer: $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer" $build_flags
built=$(date +%s)
echo "built in $((built - started)) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
for target in $(cargo +nightly fuzz list); do
  # New inputs go to a scratch directory: the committed seeds are read, never rewritten.
  scratch="$logs/$target.corpus"
  mkdir -p "$scratch"
  extra=()
  case "$target" in
    # Chunk-size lines and trailers have 4 KiB and 8 KiB bounds: inputs must reach past them.
    chunked_body) extra=(-max_len=20000) ;;
  esac
  t0=$(date +%s)
  if cargo +nightly fuzz run -s "$sanitizer" $build_flags "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${extra[@]}" \
    >"$logs/$target.log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed=1
  fi
  t1=$(date +%s)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$target.log" | tail -1)
  units=$(ls "$scratch" | wc -l)
  printf 'fuzz %-16s %-6s %4s s  %10s runs  %7s exec/s  %5s new inputs\n' \
    "$target" "$status" "$((t1 - t0))" "${runs:-?}" "${rate:-?}" "$units"
  if [ "$status" != ok ]; then
    # The crash's input is in fuzz/artifacts/<target>/; show what failed.
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact_prefix' "$logs/$target.log" | head -20 || true
    tail -5 "$logs/$target.log"
  fi
done
echo "fuzz smoke: $(( $(date +%s) - started )) s in all (build $((built - started)) s)"
exit "$failed"
