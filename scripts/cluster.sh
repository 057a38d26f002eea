#!/usr/bin/env bash
# Starts a local Carapace cluster behind one address: PostgreSQL and Redis (the machine's when
# they answer on 127.0.0.1:5432 and :6379, else private ones on free ports), three replicas
# sharing one database, one Redis and one secrets dir, and HAProxy in front of them
# (deploy/haproxy.cfg) on one port that the viewer, the API and the agents use. Prints the
# URL, and stops everything it started on Ctrl-C (or SIGTERM).
#
#   scripts/cluster.sh [--own] [--release] [--demo] [--replicas N] [--lb-port PORT]
#                      [--redis-url URL]
#
#   --own          always start a private PostgreSQL and Redis, even if the machine's answer
#   --release      build and run the release binary (default: debug, quicker to build)
#   --demo         also run the built-in demo agents, each a `carapace agent` process that
#                  connects through HAProxy (so they ride out a replica's restart)
#   --replicas N   how many replicas (default 3, at most 9)
#   --lb-port PORT where HAProxy listens, the cluster's one address (default 8080)
#   --redis-url URL use this Redis instead of finding or starting one, e.g. a Redis Cluster:
#                  redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
#
# Environment: CLUSTER_DIR (default ./cluster-data), CLUSTER_PORT (first replica's port,
# default 8081), CARAPACE_BIN (a prebuilt binary; skips cargo build). Needs haproxy
# (Debian: apt-get install haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."

own=0 profile=debug demo=0 n=3 lb_port=8080 given_redis=""
while [ $# -gt 0 ]; do
  case "$1" in
    --own) own=1 ;;
    --release) profile=release ;;
    --demo) demo=1 ;;
    --replicas) n="$2"; shift ;;
    --lb-port) lb_port="$2"; shift ;;
    --redis-url) given_redis="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$n" in [1-9]) ;; *) echo "--replicas must be 1 to 9 (deploy/haproxy.cfg has 9 servers)" >&2; exit 2 ;; esac
case "$lb_port" in ''|*[!0-9]*) echo "--lb-port must be a port number" >&2; exit 2 ;; esac

haproxy_bin="$(command -v haproxy || true)"
[ -z "$haproxy_bin" ] && [ -x /usr/sbin/haproxy ] && haproxy_bin=/usr/sbin/haproxy
if [ -z "$haproxy_bin" ]; then
  echo "haproxy is needed in front of the replicas: apt-get install haproxy" >&2
  exit 1
fi

dir="$(mkdir -p "${CLUSTER_DIR:-./cluster-data}" && cd "${CLUSTER_DIR:-./cluster-data}" && pwd)"
port0="${CLUSTER_PORT:-8081}"
pids=() agent_pids=()
lb_pid="" own_pg_data="" own_redis_pid=""

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
  # Agents first (they say goodbye), then the balancer, then the replicas (each drains).
  for p in "${agent_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${agent_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$lb_pid" ]; then kill -TERM "$lb_pid" 2>/dev/null; wait "$lb_pid" 2>/dev/null; fi
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
if [ -n "$given_redis" ]; then
  redis_url="$given_redis"
  # It may hold a password: show only the nodes.
  case "$redis_url" in
    *@*) redis_shown="${redis_url%%://*}://${redis_url##*@}" ;;
    *) redis_shown="$redis_url" ;;
  esac
  echo "== using the given Redis $redis_shown"
elif [ "$own" = 0 ] && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
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

# --- replicas: HAProxy's X-Forwarded-For is believed (--trusted-proxies), and a stopping
# replica stays in service for the default drain grace (2 s with Redis) while HAProxy's
# health checks take it out of rotation ---
for i in $(seq 0 $((n - 1))); do
  port=$((port0 + i))
  "$bin" serve --listen "127.0.0.1:$port" --replica-id "replica-$i" \
    --data-dir "$dir/replica-$i" --secrets-dir "$dir/secrets" \
    --database-url "$database_url" --redis-url "$redis_url" --log-format json \
    --trusted-proxies 127.0.0.1 \
    >"$dir/replica-$i.log" 2>&1 &
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

# --- HAProxy: deploy/haproxy.cfg as shipped, the replicas in its environment ---
lb_env=(CARAPACE_LB_BIND="127.0.0.1:$lb_port" CARAPACE_LB_ADMIN="$dir/haproxy.sock")
for i in $(seq 0 $((n - 1))); do lb_env+=(CARAPACE_$((i + 1))="127.0.0.1:$((port0 + i))"); done
env "${lb_env[@]}" "$haproxy_bin" -db -f deploy/haproxy.cfg >"$dir/haproxy.log" 2>&1 &
lb_pid=$!
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$lb_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$lb_pid" 2>/dev/null || { echo "haproxy did not start; see $dir/haproxy.log" >&2; tail -5 "$dir/haproxy.log" >&2; exit 1; }
  sleep 0.2
done
lb="http://127.0.0.1:$lb_port"

# --- the demo society, through HAProxy: each persona an agent of one demo owner, its key
# kept in $dir/demo so that the next run reuses it ---
if [ "$demo" = 1 ]; then
  store=(--data-dir "$dir/admin" --database-url "$database_url" --secrets-dir "$dir/secrets")
  email="demo@cluster.carapace.invalid"
  mkdir -p "$dir/demo"
  # A password nobody knows: the demo owner never logs in. Already there on a second run.
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' \
    | "$bin" admin "${store[@]}" create-owner --handle demo_cluster --email "$email" >/dev/null 2>&1 || true
  for toml in crates/carapace-agent/assets/personas/*.toml; do
    p="$(basename "$toml" .toml)"
    key="$dir/demo/$p.key"
    if [ ! -f "$key" ]; then
      "$bin" agent new "${store[@]}" --owner "$email" --handle "$p" \
        --name "$(sed -n 's/^name = "\(.*\)"$/\1/p' "$toml")" --bio "$(sed -n 's/^bio = "\(.*\)"$/\1/p' "$toml")" \
        --scopes read,post,comment,vote,dm,topic:create --key-file "$key" >/dev/null 2>"$dir/demo/$p.err" \
        || { echo "== demo agent $p not created: $(tail -1 "$dir/demo/$p.err")" >&2; continue; }
    fi
    "$bin" agent --hub "$lb" --key-file "$key" --persona "builtin:$p" --log-format json \
      >"$dir/agent-$p.log" 2>&1 &
    agent_pids+=($!)
  done
fi

cat <<EOF

== $n replicas up behind HAProxy, one service (database $database_url, bus ${redis_shown:-$redis_url})

   open:     $lb/   the viewer; the API at $lb/api/v1/..., WebSocket ${lb/http/ws}/ws
EOF
for i in $(seq 0 $((n - 1))); do
  port=$((port0 + i))
  echo "   replica-$i  http://127.0.0.1:$port/   pid ${pids[$i]}   log $dir/replica-$i.log"
done
cat <<EOF
   haproxy   pid $lb_pid   log $dir/haproxy.log   admin socket $dir/haproxy.sock
$( [ "$demo" = 1 ] && echo "   demo      ${#agent_pids[@]} agents through $lb, logs $dir/agent-*.log" )

   health:   curl $lb/readyz (any replica), curl http://127.0.0.1:$port0/readyz (one), /metrics on each
   try it:   sign up and create an agent (docs/AGENTS.md) against $lb and watch it in the viewer;
             kill -TERM one replica's pid: HAProxy takes it out of rotation within ~1.3 s, its
             sessions close with 1012 after 2 s and come back through $lb on the others, missing
             nothing (kill -9 does the same without the goodbye)

Ctrl-C stops the $( [ "$demo" = 1 ] && echo "agents, the ")balancer and the replicas$( [ -n "$own_redis_pid$own_pg_data" ] && echo " and the private servers").
EOF
wait "${pids[@]}" "$lb_pid"
