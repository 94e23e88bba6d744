#!/usr/bin/env bash
# The load comparison of benches/load.sh for tower-satchel's memory store and for a peer library
# serving the same counter route (benches/peers/<peer>/). The two alternate round by round (one
# load.sh round each, with its own bare-route measurement), so a slow minute on this shared
# machine hits both; the table shows the median of ROUNDS rounds of each ratio.
#
#   bash benches/peers.sh                 # tower-sessions 0.14, MemoryStore
#   ROUNDS=7 bash benches/peers.sh
#
# The peer project is built here (under a minute); it is not part of the crate, its tests or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
peer=tower-sessions
rounds=${ROUNDS:-5}
cargo build --release --quiet --example counter
cargo build --release --quiet --manifest-path "benches/peers/$peer/Cargo.toml"
ours=${CARGO_TARGET_DIR:-target}/release/examples/counter
theirs=benches/peers/$peer/target/release/peer-$peer
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for _ in $(seq 1 "$rounds"); do
  for who in tower-satchel "$peer"; do
    bin=$ours; [ "$who" = tower-satchel ] || bin=$theirs
    # Lines of load.sh's table: store visitor req/s bare ratio cpu bare ratio.
    ROUNDS=1 COUNTER_BIN=$bin bash benches/load.sh memory | awk -v who="$who" \
      '$1 == "memory" {print who, $2, $5, $8}' >>"$results"
  done
done
printf '%-15s %-10s %16s %14s\n' library visitor "throughput ratio" "CPU ratio"
for who in tower-satchel "$peer"; do
  for visitor in new returning; do
    median() { awk -v w="$who" -v v="$visitor" -v f="$1" '$1 == w && $2 == v {print $f}' "$results" |
      sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
    printf '%-15s %-10s %16s %14s\n' "$who" "$visitor" "$(median 3)" "$(median 4)"
  done
done
