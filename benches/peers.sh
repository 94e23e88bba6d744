#!/usr/bin/env bash
# The load comparison of benches/load.sh for tower-satchel and for a peer library serving the same
# counter route (benches/peers/<peer>/), store by store. The two alternate round by round (one
# load.sh round each, with its own bare-route measurement), so a slow minute on this shared machine
# hits both; the table shows the median of ROUNDS rounds of each ratio.
#
#   bash benches/peers.sh                 # tower-sessions 0.14, MemoryStore
#   bash benches/peers.sh memory redis    # and tower-sessions-redis-store 0.16 (fred)
#   ROUNDS=7 bash benches/peers.sh redis
#   REDIS_POOL=1 bash benches/peers.sh redis   # the peer's fred pool size (default 6)
#
# The peer project is built here (about a minute); it is not part of the crate, its tests or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=tower-sessions
rounds=${ROUNDS:-5}
stores=("$@")
[ ${#stores[@]} -gt 0 ] || stores=(memory)
features=()
for s in "${stores[@]}"; do
  case "$s" in
    memory) ;;
    redis) features+=(redis-store) ;;
    *) echo "the peer serves memory and redis only, not $s" >&2; exit 2 ;;
  esac
done
cargo build --release --quiet --example counter ${features[0]:+--features "$(IFS=,; echo "${features[*]}")"}
cargo build --release --quiet --manifest-path "benches/peers/$peer/Cargo.toml"
ours=${CARGO_TARGET_DIR:-target}/release/examples/counter
theirs=benches/peers/$peer/target/release/peer-$peer
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for _ in $(seq 1 "$rounds"); do
  for s in "${stores[@]}"; do
    for who in tower-satchel "$peer"; do
      bin=$ours; [ "$who" = tower-satchel ] || bin=$theirs
      # Lines of load.sh's table: store visitor req/s bare ratio cpu bare ratio.
      ROUNDS=1 COUNTER_BIN=$bin bash benches/load.sh "$s" | awk -v who="$who" -v s="$s" \
        '$1 == s {print who, s, $2, $5, $8}' >>"$results"
    done
  done
done
printf '%-15s %-7s %-10s %16s %14s\n' library store visitor "throughput ratio" "CPU ratio"
for s in "${stores[@]}"; do
  for who in tower-satchel "$peer"; do
    for visitor in new returning; do
      median() { awk -v w="$who" -v s="$s" -v v="$visitor" -v f="$1" \
        '$1 == w && $2 == s && $3 == v {print $f}' "$results" |
        sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
      printf '%-15s %-7s %-10s %16s %14s\n' "$who" "$s" "$visitor" "$(median 4)" "$(median 5)"
    done
  done
done
