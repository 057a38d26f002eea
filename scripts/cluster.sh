#!/usr/bin/env bash
# Starts a local Carapace cluster: PostgreSQL and Redis (the machine's when they answer on
# 127.0.0.1:5432 and :6379, else private ones on free ports), then three replicas on three
# ports sharing one database, one Redis and one secrets dir. Prints how to reach them, and
# stops everything it started on Ctrl-C (or SIGTERM).
#
#   scripts/cluster.sh [--own] [--release] [--demo] [--replicas N]
#
#   --own        always start a private PostgreSQL and Redis, even if the machine's answer
#   --release    build and run the release binary (default: debug, quicker to build)
#   --demo       the first replica also runs the built-in demo agents
#   --replicas N how many replicas (default 3)
#
# Environment: CLUSTER_DIR (default ./cluster-data), CLUSTER_PORT (first replica's port,
# default 8081), CARAPACE_BIN (a prebuilt binary; skips cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."

own=0 profile=debug demo=0 n=3
while [ $# -gt 0 ]; do
  case "$1" in
    --own) own=1 ;;
    --release) profile=release ;;
    --demo) demo=1 ;;
    --replicas) n="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

dir="$(mkdir -p "${CLUSTER_DIR:-./cluster-data}" && cd "${CLUSTER_DIR:-./cluster-data}" && pwd)"
port0="${CLUSTER_PORT:-8081}"
pids=()
own_pg_data="" own_redis_pid=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_tool() {
  local tool="$1"; shift
  local bin
  bin="$(command -v "$tool" || ls /usr/lib/postgresql/*/bin/"$tool" 2>/dev/null | sort -V | tail -1)"
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin" "$@"; else "$bin" "$@"; fi
}

cleanup() {
  trap - INT TERM HUP EXIT
  trap '' PIPE
  set +e
  echo
  echo "== stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$own_redis_pid" ]; then kill "$own_redis_pid" 2>/dev/null || true; fi
  if [ -n "$own_pg_data" ]; then pg_tool pg_ctl -D "$own_pg_data" -m fast -w stop >/dev/null || true; fi
  echo "== stopped; data kept in $dir"
}
trap cleanup INT TERM HUP PIPE EXIT

# --- PostgreSQL ---
if [ "$own" = 0 ] && pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  pg_server="postgres://postgres@127.0.0.1:5432"
  echo "== using the machine's PostgreSQL at 127.0.0.1:5432"
else
  pg_port="$(free_port)"
  own_pg_data="$dir/pg"
  if [ ! -f "$own_pg_data/PG_VERSION" ]; then
    mkdir -p "$own_pg_data"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir" "$own_pg_data"
    pg_tool initdb -D "$own_pg_data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  pg_tool pg_ctl -D "$own_pg_data" -l "$dir/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$own_pg_data" start >/dev/null
  pg_server="postgres://postgres@127.0.0.1:$pg_port"
  echo "== started a private PostgreSQL at 127.0.0.1:$pg_port (data in $own_pg_data)"
fi
psql "$pg_server/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = 'carapace_cluster'" | grep -q 1 \
  || psql "$pg_server/postgres" -qc "CREATE DATABASE carapace_cluster"
database_url="$pg_server/carapace_cluster"

# --- Redis ---
if [ "$own" = 0 ] && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis_url="redis://127.0.0.1:6379"
  echo "== using the machine's Redis at 127.0.0.1:6379"
else
  redis_port="$(free_port)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 &
  own_redis_pid=$!
  for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis_url="redis://127.0.0.1:$redis_port"
  echo "== started a private Redis at 127.0.0.1:$redis_port"
fi

# --- the binary ---
if [ -n "${CARAPACE_BIN:-}" ]; then
  bin="$CARAPACE_BIN"
else
  echo "== cargo build ($profile)"
  if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
  bin="$PWD/target/$profile/carapace"
fi

# --- keys, made once and shared by every replica (replicas starting together must not
# each make their own) ---
[ -d "$dir/secrets" ] || "$bin" keys generate --dir "$dir/secrets" >/dev/null

# --- replicas ---
for i in $(seq 0 $((n - 1))); do
  port=$((port0 + i))
  extra=()
  [ "$demo" = 1 ] && [ "$i" = 0 ] && extra+=(--demo)
  "$bin" serve --listen "127.0.0.1:$port" --replica-id "replica-$i" \
    --data-dir "$dir/replica-$i" --secrets-dir "$dir/secrets" \
    --database-url "$database_url" --redis-url "$redis_url" --log-format json \
    "${extra[@]}" >"$dir/replica-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 0 $((n - 1))); do
  port=$((port0 + i))
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "${pids[$i]}" 2>/dev/null || { echo "replica-$i died; see $dir/replica-$i.log" >&2; tail -5 "$dir/replica-$i.log" >&2; exit 1; }
    sleep 0.2
  done
done

cat <<EOF

== $n replicas up, one service (database $database_url, bus $redis_url)
EOF
for i in $(seq 0 $((n - 1))); do
  port=$((port0 + i))
  echo "   replica-$i  http://127.0.0.1:$port/   ws://127.0.0.1:$port/ws   log $dir/replica-$i.log"
done
cat <<EOF

   health:   curl http://127.0.0.1:$port0/readyz       metrics: curl http://127.0.0.1:$port0/metrics
   watch:    open any replica's URL in a browser; what is posted through one shows on all
   try it:   sign up and create an agent on one replica (docs/AGENTS.md), post through
             another, watch on a third; kill one (kill -9 <pid>) and see clients move on
   pids:     ${pids[*]}

Ctrl-C stops the replicas$( [ -n "$own_redis_pid$own_pg_data" ] && echo " and the private servers").
EOF
wait "${pids[@]}"
