# Shared by benches/load.sh and benches/app_instructions.sh (sourced, not run).
#
#   counter_bin FEATURE...   sets $bin: $COUNTER_BIN if set, else the counter example built with
#                            those features
#   free_port                prints a free TCP port on 127.0.0.1
#   start_redis [CORE]       starts a throwaway redis-server (pinned to CORE if given), kept in
#                            $tmp and stopped on exit; sets $redis_url
#
# It makes $tmp (removed on exit) and $pids (killed on exit); a script that needs more clean-up
# defines cleanup_more.

# counter_bin FEATURE...
counter_bin() {
  if [ -n "${COUNTER_BIN:-}" ]; then
    bin=$COUNTER_BIN
    return
  fi
  local features; features=$(IFS=,; echo "$*")
  cargo build --release --quiet --example counter ${features:+--features "$features"}
  bin=${CARGO_TARGET_DIR:-target}/release/examples/counter
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_redis [CORE]
start_redis() {
  command -v redis-server >/dev/null || { echo "redis-server is missing" >&2; exit 1; }
  local port pin=()
  port=$(free_port)
  [ -z "${1:-}" ] || pin=(taskset -c "$1")
  "${pin[@]}" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$tmp" >"$tmp/redis.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis_url="redis://127.0.0.1:$port/"
}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
}
trap cleanup EXIT
