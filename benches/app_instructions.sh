#!/usr/bin/env bash
# Instructions per returning-visitor request in the whole counter app, counted by valgrind
# (callgrind): the layer, the store's client (its request encoding and reply parsing included), the
# runtime and hyper, but not the kernel nor the store's server. Repeatable to a few instructions,
# whatever else the machine is doing, unlike benches/load.sh.
#
# Next to it, the code the requests ran: distinct 64-byte lines of machine code executed, in KiB.
# Between two requests the kernel's network path runs and evicts the 32 KiB instruction cache, so
# every request fetches its code again from further out: code size costs time per request much as
# instructions do (see README, Benchmarks).
#
#   bash benches/app_instructions.sh                 # memory store and the bare route
#   bash benches/app_instructions.sh redis cookie    # these stores and the bare route
#   REQUESTS=2000 bash benches/app_instructions.sh redis
#   COUNTER_BIN=/tmp/lto/release/examples/counter bash benches/app_instructions.sh
#   KEEP=/tmp/profiles bash benches/app_instructions.sh   # also keeps each callgrind dump there
#
# A kept dump is taken from the running app (callgrind_control); callgrind_annotate's default
# self-cost list then charges everything to the worker thread's outermost frames: read it with
# `callgrind_annotate --inclusive=yes` or `--tree=calling --threshold=100` instead.
#
# Each store: the app starts under callgrind, one session is created, 200 requests warm up, the
# counters are zeroed, then $REQUESTS requests with the session's cookie run on one keep-alive
# connection and the counters are dumped. Redis gets a throwaway redis-server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-1000}
stores=("$@")
[ ${#stores[@]} -gt 0 ] || stores=(memory)
stores=(none "${stores[@]}")

command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }
command -v callgrind_control >/dev/null || { echo "callgrind_control is missing (valgrind)" >&2; exit 1; }

features=()
for s in "${stores[@]}"; do
  case "$s" in
    none | memory) ;;
    redis) features+=(redis-store) ;;
    cookie) features+=(cookie-store) ;;
    *) echo "unknown store: $s (none, memory, redis, cookie)" >&2; exit 2 ;;
  esac
done
# shellcheck source=benches/common.sh
. benches/common.sh
# COUNTER_BIN counts another build of the counter instead (say, one with another profile).
counter_bin "${features[@]}"

printf '%-8s %14s %10s\n' store instructions "code KiB"
for s in "${stores[@]}"; do
  env_vars=(SESSION_STORE="$s")
  case "$s" in
    redis) start_redis; env_vars+=(REDIS_URL="$redis_url") ;;
    cookie) env_vars+=(SESSION_KEY="$(head -c 32 /dev/urandom | base64 -w0)") ;;
  esac
  port=$(free_port)
  out="$tmp/callgrind.$s"
  env "${env_vars[@]}" ADDR="127.0.0.1:$port" TOKIO_WORKER_THREADS=1 RUST_LOG=error \
    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out.%p" "$bin" >"$tmp/app.log" 2>&1 &
  app=$!
  pids+=("$app")
  for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$port/" -o /dev/null && break; sleep 0.2; done
  python3 - "$port" "$REQUESTS" <<'EOF'
import http.client, subprocess, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("GET", "/")
r = c.getresponse()
r.read()
cookie = (r.getheader("set-cookie") or "").split(";")[0]
def run(count):
    for _ in range(count):
        c.request("GET", "/", headers={"Cookie": cookie} if cookie else {})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
run(200)
subprocess.run(["callgrind_control", "--zero"], check=True, capture_output=True)
run(n)
subprocess.run(["callgrind_control", "--dump=measured"], check=True, capture_output=True)
EOF
  kill "$app"
  wait "$app" 2>/dev/null || true
  dump=$(ls "$out".*.1 | head -n 1)
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$dump" "$KEEP/callgrind.$s"; fi
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  # The dump lists each executed instruction's address, per object, absolute ("0x..."), relative
  # to the line before ("+n", "-n") or the same ("*"); a "calls=" line is followed by the call
  # site's own line. Count the distinct (object, address / 64).
  code=$(python3 - "$dump" <<'EOF'
import sys
lines, ob, at = set(), "", 0
for line in open(sys.argv[1]):
    if line.startswith("ob="):
        ob = line.split(")")[0]
    elif line[:1] in "0123456789+-*":
        pos = line.split()[0]
        if pos[0] in "+-":
            at += int(pos, 0)
        elif pos != "*":
            at = int(pos, 0)
        lines.add((ob, at >> 6))
print(len(lines) * 64 // 1024)
EOF
)
  printf '%-8s %14d %10d\n' "$s" $((total / REQUESTS)) "$code"
done
