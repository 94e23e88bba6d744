#!/usr/bin/env bash
# Instructions per request through the layer, counted by valgrind (callgrind): repeatable whatever
# else the machine is doing, unlike wall-clock figures. Each benchmark of benches/micro.rs runs with
# two iteration counts; the difference divided by the difference in iterations is the cost of one
# request, with divan's fixed start-up cost cancelled out.
#
#   bash benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind" >&2; exit 1; }
cargo bench --bench micro --no-run --quiet 2>/dev/null
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/micro-* | grep -v '\.d$' | head -n 1)
count() { # bench iterations
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --bench --exact "micro::$1" \
    --sample-count "$2" --sample-size 1 2>&1 | awk '/refs:/ {gsub(",", "", $4); print $4}'
}
printf '%-42s %14s %10s\n' benchmark instructions "vs bare"
bare=""
for bench in request_bare_route request_returning_reader request_returning_visitor \
  request_returning_visitor_router_wrapped request_new_visitor; do
  low=$(count "$bench" 1000)
  high=$(count "$bench" 3000)
  per=$(( (high - low) / 2000 ))
  [ -n "$bare" ] || bare=$per
  printf '%-42s %14d %10s\n' "$bench" "$per" "$(awk -v a="$per" -v b="$bare" 'BEGIN {printf "%.2fx", a / b}')"
done
