#!/usr/bin/env bash
# The chaos soak of tests/chaos.rs, longer than CI runs it and with a random seed: three
# replicas behind HAProxy on a Redis and a PostgreSQL of the test's own, under steady load,
# with faults drawn from the seed (SIGKILL or SIGSTOP a replica, restart Redis or PostgreSQL,
# cut a replica off both in its network namespace, revoke or rotate an agent's key) and
# 30 s tokens that every agent refreshes. The seed is printed first: pass it back to replay
# a run. Needs root (network namespaces), like the CI run.
#
#   scripts/chaos.sh                          # 600 s, random seed
#   scripts/chaos.sh --seconds 120 --seed 0x2a
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

seconds=600
seed="0x$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n')"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--seed S]" >&2; exit 2 ;;
  esac
done
echo "chaos seed $seed, $seconds s (replay: $0 --seconds $seconds --seed $seed)"
export CARAPACE_CHAOS_SECONDS="$seconds" CARAPACE_CHAOS_SEED="$seed"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
cargo test --test chaos -- --nocapture
