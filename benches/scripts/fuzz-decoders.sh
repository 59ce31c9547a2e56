#!/usr/bin/env bash
# Property tests of every decoder a store can reach, at a high case count: the bounded RESP reader (redis shard
# reads, all of 0-db), the 0-db protocol client against a server answering arbitrary bytes, the shard blob
# format and leaf audits (por), store URIs, qsfs.toml, and the metadata log's records, head, lease and snapshot
# objects. CI runs the same tests with a few hundred cases.
#
#   bash benches/scripts/fuzz-decoders.sh                  # 1,000,000 cases per property
#   CASES=10000 bash benches/scripts/fuzz-decoders.sh      # a quicker run
#
# Environment: CASES (default 1000000), CARGO_TARGET_DIR as usual. Prints, per test target, the properties run,
# the cases each ran, and the wall time.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

cases="${CASES:-1000000}"
[[ "$cases" =~ ^[1-9][0-9]*$ ]] || { echo "CASES must be a positive whole number, not '$cases'" >&2; exit 2; }

echo "building the test binaries" >&2
cargo test -p qsfs-backends --features testing --no-run --quiet >&2
cargo test -p qsfs-por --no-run --quiet >&2
cargo test -p qsfs --lib --test config_props --no-run --quiet >&2

# run LABEL CARGO-TEST-ARGS...: runs one target's properties with $cases cases and prints one line.
run() {
    local label="$1" start end out passed
    shift
    start=$(date +%s.%N)
    out=$(PROPTEST_CASES="$cases" cargo test --quiet "$@" 2>&1) || { echo "$out" >&2; echo "$label: FAILED" >&2; exit 1; }
    end=$(date +%s.%N)
    passed=$(grep -Eo '[0-9]+ passed' <<<"$out" | awk '{s += $1} END {print s + 0}')
    printf '%-28s %3d tests (properties at %d cases)  %8.1f s\n' "$label" "$passed" "$cases" "$(echo "$end - $start" | bc)"
}

printf 'decoder fuzzing, %d cases per property\n' "$cases"
run "resp reader" -p qsfs-backends --features testing --lib resp::tests::
run "0-db protocol client" -p qsfs-backends --features testing --test zdb_fuzz
run "shard blob + leaf audit" -p qsfs-por --test decoders
run "store URIs" -p qsfs-backends --features testing --test uri_props
run "qsfs.toml" -p qsfs --test config_props
run "metadata log records" -p qsfs --lib replica::record::
