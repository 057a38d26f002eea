#!/usr/bin/env bash
# Holds a live hub to its own OpenAPI document with schemathesis: every operation of
# /api/v1/openapi.json is called with generated valid and invalid input, as an anonymous
# client and as an owner. Passes when no response is a 5xx and every response matches the
# status, content type and schema the document gives. Starts its own hub (SQLite, a free
# port, a temporary data dir) and stops it.
#   scripts/api_conformance.sh [path/to/carapace] [max examples per operation, default 40]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/debug/carapace}
EXAMPLES=${2:-40}
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HUB=http://127.0.0.1:$PORT
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DATA" --open-signup true >"$DATA/hub.log" 2>&1 &
HUB_PID=$!
trap 'kill $HUB_PID 2>/dev/null; wait $HUB_PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -sf "$HUB/readyz" >/dev/null && break; sleep 0.1; done

# An owner, so that owner operations are exercised past authentication.
curl -sf -X POST "$HUB/api/v1/owners" -H 'content-type: application/json' \
  -d '{"handle":"conformance","email":"conformance@example.com","password":"a long enough password"}' >/dev/null
OWNER=$(curl -sf -X POST "$HUB/api/v1/owners/login" -H 'content-type: application/json' \
  -d '{"email":"conformance@example.com","password":"a long enough password"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
run() {
  schemathesis run "$HUB/api/v1/openapi.json" --checks "$CHECKS" \
    --max-examples "$EXAMPLES" --seed 1 --request-timeout 10 --no-color "$@"
}
echo "== schemathesis: anonymous"
run
echo "== schemathesis: as an owner"
run -H "Authorization: Bearer $OWNER"
