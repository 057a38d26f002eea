#!/usr/bin/env bash
# Fuzzes the parsers that read hostile input (cargo-fuzz, libFuzzer, nightly Rust): the
# WebSocket frame reader, the command parser, the JWT checks, the search-query sanitiser,
# the persona parser and the secret scanner (targets in fuzz/fuzz_targets).
#
#   scripts/fuzz.sh [--seconds N] [--smoke] [TARGET ...]
#
#   --seconds N  how long each target runs (default 600)
#   --smoke      each target for 10 s, built without AddressSanitizer (what CI runs: the
#                targets' own checks and Rust's still hold, and it builds in half the time)
#   TARGET       run only these (default: all)
#
# Each target starts from its committed seed corpus (fuzz/corpus/TARGET, read only) and
# keeps what it finds in FUZZ_WORK (default target/fuzz-work/TARGET). A crash stops the run
# with the input that caused it under FUZZ_WORK/TARGET/artifacts; replay it with
#   cargo +nightly fuzz run TARGET PATH
# and turn it into a regular test. Prints one line per target: runs, seconds, coverage.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=600 sanitizer=address targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift ;;
    --smoke) seconds=10 sanitizer=none ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(ws_frames command jwt search_query persona secrets)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "== installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

work="${FUZZ_WORK:-$PWD/target/fuzz-work}"
mkdir -p "$work"
echo "== building the fuzz targets (sanitizer: $sanitizer)"
if ! cargo +nightly fuzz build -O -s "$sanitizer" >"$work/build.log" 2>&1; then
  grep -v '^\s*Compiling' "$work/build.log" | tail -40
  exit 1
fi
status=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  log="$work/$t/log"
  if cargo +nightly fuzz run -O -s "$sanitizer" "$t" "$work/$t/corpus" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/$t/artifacts/" >"$log" 2>&1; then
    result=clean
  else
    result="FAILED (see $log and $work/$t/artifacts)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo ?)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo ?)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo ?)
  echo "fuzz $t: $result; ${runs} runs in ${seconds} s, coverage ${cov} edges, ${ft} features"
  if [ "$result" != clean ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -10 || true
  fi
done
exit "$status"
