#!/usr/bin/env bash
# End-to-end throughput of `qsfs put` and `qsfs get` on a temporary volume with the embedded default stores
# (six dir stores, 4+2, 4 MiB segments), using the release build.
#
#   bash benches/scripts/put-get.sh                 # 1 GiB of random data
#   SIZE_MIB=256 DATA=text bash benches/scripts/put-get.sh   # 256 MiB of compressible text
#
# Environment: SIZE_MIB (default 1024), DATA=random|text (default random), BENCH_DIR (parent of the temporary
# directory; default $TMPDIR or /tmp — it needs about 3.5x SIZE_MIB of free space).
# Prints one line per operation: throughput in MB/s (10^6 bytes per second of wall time) and peak RSS in MiB.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

size_mib="${SIZE_MIB:-1024}"
data="${DATA:-random}"
case "$data" in random | text) ;; *) echo "DATA must be random or text, not '$data'" >&2; exit 2 ;; esac
[[ "$size_mib" =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_MIB must be a positive whole number, not '$size_mib'" >&2; exit 2; }
bytes=$((size_mib * 1024 * 1024))

if [[ ! -x /usr/bin/time ]]; then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
    echo "+ ${sudo[*]} apt-get update && ${sudo[*]} apt-get install -y time" >&2
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y time
fi

echo "building: cargo build --release -p qsfs" >&2
cargo build --release -p qsfs >&2
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
qsfs="$target_dir/release/qsfs"
[[ -x "$qsfs" ]] || { echo "no release binary at $qsfs" >&2; exit 1; }

work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/qsfs-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
vol="$work/vol"
src="$work/input.bin"
out="$work/output.bin"

echo "making $size_mib MiB of $data data in $work" >&2
if [[ "$data" == random ]]; then
    head -c "$bytes" /dev/urandom >"$src"
else
    # Varied but compressible text: numbered lines of a few repeating words.
    # awk stops by itself (a `head -c` cut would SIGPIPE awk and trip pipefail); truncate trims the last line.
    awk -v n="$bytes" 'BEGIN { for (i = 0; w < n; i++) { l = sprintf("%09d the quick brown fox %d jumps over the lazy dog %d\n", i, i % 97, i % 13); printf "%s", l; w += length(l) } }' >"$src"
    truncate -s "$bytes" "$src"
fi

"$qsfs" --volume "$vol" init >&2

# run_timed NAME CMD...: runs CMD under /usr/bin/time -v and prints "NAME: MB/s, peak RSS".
run_timed() {
    local name="$1"
    shift
    local tf="$work/$name.time" start end
    start=$(date +%s%N)
    /usr/bin/time -v -o "$tf" "$@"
    end=$(date +%s%N)
    local rss_kib
    rss_kib=$(awk -F': *' '/Maximum resident set size/ { print $2 }' "$tf")
    awk -v name="$name" -v bytes="$bytes" -v ns="$((end - start))" -v rss="$rss_kib" -v mib="$size_mib" -v data="$data" \
        'BEGIN { s = ns / 1e9; printf "%-4s %6d MiB %-6s %8.1f MB/s  %7.2f s  peak RSS %8.1f MiB\n", name, mib, data, bytes / 1e6 / s, s, rss / 1024 }'
}

run_timed put "$qsfs" --volume "$vol" put "$src" /bench.bin
run_timed get "$qsfs" --volume "$vol" get /bench.bin "$out"

if ! cmp "$src" "$out"; then
    echo "FAIL: the file read back differs from the one written" >&2
    exit 1
fi
echo "ok: output identical to input" >&2
