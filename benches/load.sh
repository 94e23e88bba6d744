#!/usr/bin/env bash
# Load comparison: the counter example behind SessionLayer against the same routes with no session
# layer (SESSION_STORE=none), in one run, server and load generator pinned to different cores.
#
#   bash benches/load.sh                       # memory store
#   bash benches/load.sh memory file cookie    # several stores
#   DURATION=10 ROUNDS=5 CONNS=64 bash benches/load.sh redis
#   SAMPLES=rounds.txt bash benches/load.sh   # also appends each round's figures to rounds.txt
#   bash benches/load.sh spin:1000 spin:3000 memory   # calibration rows, see below
#
# Each round measures, DURATION seconds each, the bare route, the store with a new visitor, the bare
# route again (sending a cookie of the same length), the store with returning visitors. Each ratio
# is taken within its round, between a store measurement and the bare one just before it, so the
# slow drift of this shared machine's speed cancels; the table shows medians over ROUNDS rounds, so
# a burst of noise moves one sample, not the result.
#
# Stores: memory, file, redis, postgres, sqlite, cookie. Redis gets a throwaway redis-server on a
# free port; postgres uses $DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test); sqlite
# and file use temporary folders; cookie uses a random key.
#
# Prints requests/second and the ratio to the bare route for a new visitor (no cookie: every
# request creates a session) and returning visitors ($CONNS live sessions, each request carrying
# one of their cookies in turn; the counter handler writes on every request). Next to it, the app
# server's CPU time per request (from /proc, user + system, over the same runs) and the bare
# route's CPU time divided by the store's: when the load generator rather than the server limits
# the bare route's throughput, the throughput ratio flatters the store and the CPU ratio does not.
# The last four columns split that CPU time into user (the app's own code: the layer, the store's
# client, hyper) and system (the kernel: sockets, and waking the load generator when it sleeps).
# (For Redis and PostgreSQL the CPU column is the app's only, not the database server's.)
#
# Calibration: `spin:NS` is not a store but the bare route busy-waiting NS nanoseconds a request
# (the counter's $BARE_SPIN_NS), measured like a store. Its ratio is what a fixed cost per request,
# and nothing else, does on the machine at hand: compare a store's ratio with it, and its CPU
# column, to see how many microseconds the store's ratio amounts to there. (On a 2-core VM the
# ratio falls faster than the CPU cost alone says: the slower the server, the more often the
# load generator sleeps, and the server's kernel pays for waking it.)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-32}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
# Where redis-server runs: with the load generator by default (the app server keeps its core).
REDIS_CORE=${REDIS_CORE:-$CLIENT_CORE}
stores=("$@")
[ ${#stores[@]} -gt 0 ] || stores=(memory)

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

features=()
for s in "${stores[@]}"; do
  case "$s" in
    memory) ;;
    file) features+=(file-store) ;;
    redis) features+=(redis-store) ;;
    postgres) features+=(postgres-store) ;;
    sqlite) features+=(sqlite-store) ;;
    cookie) features+=(cookie-store) ;;
    spin:[0-9]*) ;;
    *) echo "unknown store: $s" >&2; exit 2 ;;
  esac
done
# shellcheck source=benches/common.sh
. benches/common.sh
# COUNTER_BIN runs another server with the same surface instead (see benches/peers.sh).
counter_bin "${features[@]}"
cleanup_more() {
  if [ -n "${pg_schema:-}" ]; then
    psql "$pg_url" -qc "DROP SCHEMA IF EXISTS $pg_schema CASCADE" >/dev/null 2>&1 || true
  fi
}

# start_server ENV... : starts the counter with the given environment; sets $url and $server_pid.
start_server() {
  local port; port=$(free_port)
  env ADDR="127.0.0.1:$port" TOKIO_WORKER_THREADS=1 RUST_LOG=error "$@" \
    taskset -c "$SERVER_CORE" "$bin" >"$tmp/server.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -fs "$url/" -o /dev/null && return 0
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$tmp/server.log" >&2; exit 1
}

stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }

clk_tck=$(getconf CLK_TCK)
# cpu_ticks PID : user and system CPU time of the process so far, in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# measure URL [wrk args...] : prints requests/second and the app server's CPU time per request
# in microseconds: user + system, user, system; fails on non-2xx responses.
measure() {
  local out user0 sys0 user1 sys1
  read -r user0 sys0 < <(cpu_ticks "$server_pid")
  out=$(taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" "$@")
  read -r user1 sys1 < <(cpu_ticks "$server_pid")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses during the run:" >&2; echo "$out" >&2; exit 1; fi
  awk -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) -v hz="$clk_tck" -v d="$DURATION" \
    '/Requests\/sec/ {k = 1e6 / (hz * $2 * d); printf "%s %.2f %.2f %.2f\n", $2, (u + s) * k, u * k, s * k}' \
    <<<"$out"
}

# prepare_store NAME: sets $store_env (the counter's environment for that store), starting what the
# store needs. Runs in this shell, not a subshell, so background servers are tracked in $pids.
prepare_store() {
  case "$1" in
    memory) store_env="SESSION_STORE=memory" ;;
    file) mkdir -p "$tmp/sessions"; store_env="SESSION_STORE=file SESSION_DIR=$tmp/sessions" ;;
    redis) start_redis "$REDIS_CORE"; store_env="SESSION_STORE=redis REDIS_URL=$redis_url" ;;
    postgres)
      # A schema of its own, dropped on exit, so nothing is left in the database's public schema.
      pg_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
      pg_schema=load_$$_$RANDOM
      psql "$pg_url" -qc "CREATE SCHEMA $pg_schema" >/dev/null
      local sep='?'; [[ $pg_url == *\?* ]] && sep='&'
      store_env="SESSION_STORE=postgres DATABASE_URL=$pg_url${sep}options=-c%20search_path%3D$pg_schema" ;;
    sqlite) store_env="SESSION_STORE=sqlite DATABASE_URL=sqlite://$tmp/sessions.db?mode=rwc" ;;
    cookie) store_env="SESSION_STORE=cookie SESSION_KEY=$(head -c 32 /dev/urandom | base64 -w0)" ;;
    spin:*) store_env="SESSION_STORE=none BARE_SPIN_NS=${1#spin:}" ;;
  esac
}

# sessions_script URL: creates $CONNS sessions and writes a wrk script that sends their cookies in
# turn, so concurrent requests belong to different sessions (as with real visitors) rather than all
# queueing on one session's lock.
sessions_script() {
  local cookies=() cookie
  for _ in $(seq 1 "$CONNS"); do
    cookie=$(curl -fsi "$1/" | awk 'tolower($1)=="set-cookie:" {split($2, a, ";"); print a[1]}' | tr -d '\r')
    # The calibration's bare route sets no cookie: it gets one as long as an ID, like the bare one.
    [[ $s != spin:* ]] || cookie="id=$(head -c 43 /dev/zero | tr '\0' x)"
    [ -n "$cookie" ] || { echo "no session cookie from the $s store" >&2; exit 1; }
    cookies+=("\"$cookie\"")
  done
  # The requests are formatted once, at start-up: formatting one per request in Lua costs the
  # load generator more than the bare route costs the server.
  {
    echo "local cookies = {$(IFS=,; echo "${cookies[*]}")}"
    echo 'local requests = {}'
    echo 'for i, c in ipairs(cookies) do requests[i] = wrk.format(nil, nil, {["Cookie"] = c}) end'
    echo 'local n = 0'
    echo 'request = function()'
    echo '  n = n % #requests + 1'
    echo '  return requests[n]'
    echo 'end'
  } >"$tmp/returning.lua"
  # The bare route gets a cookie of the same length (43 characters for an ID, more for a sealed
  # cookie-store session), so both parse requests of the same size.
  local value=${cookie#*=}
  printf 'local r = wrk.format(nil, nil, {["Cookie"] = "id=%s"})\nrequest = function() return r end\n' \
    "$(head -c "${#value}" /dev/zero | tr '\0' x)" >"$tmp/bare.lua"
}

# cpu_times : the machine's total and stolen CPU time so far, in clock ticks ("steal": time a
# virtual machine's CPUs were ready to run but the host ran other guests).
cpu_times() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat; }

# median FIELD : the median of that field of the lines read.
median() { cut -d' ' -f"$1" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-9s %-10s %10s %10s %6s   %8s %8s %6s   %6s %6s   %6s %6s\n' store visitor "req/s" "bare" \
  ratio "cpu µs" "bare" ratio "user" "bare" "sys" "bare"
for s in "${stores[@]}"; do
  prepare_store "$s"
  # The bare server runs through all rounds; the store's server is started afresh each round.
  start_server SESSION_STORE=none
  bare_url=$url bare_pid=$server_pid
  : >"$tmp/samples"
  read -r total_before steal_before < <(cpu_times)
  for _ in $(seq 1 "$ROUNDS"); do
    # Each store measurement directly follows a bare one of the same kind: the bare route without
    # a script before the new visitor, with a script sending a cookie of the same length before
    # the returning ones. Their ratio is taken per round, so drift between rounds cancels.
    server_pid=$bare_pid
    bare_new=$(measure "$bare_url/")
    # shellcheck disable=SC2086
    start_server $store_env
    store_pid=$server_pid
    new=$(measure "$url/")
    sessions_script "$url"
    server_pid=$bare_pid
    bare_returning=$(measure "$bare_url/" -s "$tmp/bare.lua")
    server_pid=$store_pid
    returning=$(measure "$url/" -s "$tmp/returning.lua")
    stop_server
    echo "new $new $bare_new" >>"$tmp/samples"
    echo "returning $returning $bare_returning" >>"$tmp/samples"
  done
  server_pid=$bare_pid
  stop_server
  if [ -n "${SAMPLES:-}" ]; then sed "s/^/$s /" "$tmp/samples" >>"$SAMPLES"; fi
  # row VISITOR : one line of the table. Samples: visitor rps cpu user sys, then the same four
  # for the bare route.
  row() {
    local lines; lines=$(awk -v v="$1" '$1 == v' "$tmp/samples")
    col() { awk "{print $1}" <<<"$lines" | median 1; }
    printf '%-9s %-10s %10.0f %10.0f %6.2f   %8.2f %8.2f %6.2f   %6.2f %6.2f   %6.2f %6.2f\n' \
      "$s" "$1" "$(col '$2')" "$(col '$6')" "$(col '$2 / $6')" "$(col '$3')" "$(col '$7')" \
      "$(col '$7 / $3')" "$(col '$4')" "$(col '$8')" "$(col '$5')" "$(col '$9')"
  }
  row new
  row returning
  read -r total_after steal_after < <(cpu_times)
  awk -v t=$((total_after - total_before)) -v s=$((steal_after - steal_before)) \
    'BEGIN {if (t > 0 && s * 100 > t) printf "  (steal: %.1f %% of the CPU time went to other guests of the host during these runs: the figures are less reliable)\n", s * 100 / t}'
done
