#!/usr/bin/env bash
# The exhaustion cases of tests/exhaustion.rs (issue #21) at a larger scale than CI runs them:
# 10,000 WebSocket subscribers that never read (CI: 1,000) and 20,000 connect/drop cycles
# (CI: 2,000), beside the fd-limit and disk-full cases. Each case prints its figures (fd
# limit, refused accepts, RSS bound and measured values, times to recover).
#
# Needs root (the disk-full case mounts a tmpfs of its own) and a descriptor limit above the
# subscribers plus 1,000 (the test process and the hub, which inherits the limit, each hold
# one per session): the script raises its limit to that, or to its hard limit. The stalled sessions also hold kernel socket
# buffers (up to tcp_wmem's maximum each) until they are cut; /proc/net/sockstat is shown
# before and after.
#
#   scripts/exhaustion.sh                        # 10,000 non-readers, 20,000 cycles
#   NONREADERS=5000 CYCLES=5000 scripts/exhaustion.sh subscribers_that
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CARAPACE_EXHAUST_NONREADERS="${NONREADERS:-10000}"
export CARAPACE_EXHAUST_CYCLES="${CYCLES:-20000}"

need=$((CARAPACE_EXHAUST_NONREADERS + 1000))
# Root may raise the hard limit too; others get their hard limit.
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "descriptor limit $(ulimit -n) is below $need: raise the hard limit (ulimit -Hn)" >&2
  exit 1
fi
echo "== $CARAPACE_EXHAUST_NONREADERS non-readers, $CARAPACE_EXHAUST_CYCLES cycles, ulimit -n $(ulimit -n)"
grep TCP /proc/net/sockstat
# One case at a time: each measures its own hub's memory and time.
cargo test --test exhaustion -- --nocapture --test-threads 1 "$@"
grep TCP /proc/net/sockstat
