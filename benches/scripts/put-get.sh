#!/usr/bin/env bash
# End-to-end throughput of `qsfs put` and `qsfs get` on a temporary volume with the embedded default stores
# (six dir stores, 4+2, 4 MiB segments), or six S3 buckets on a local Garage server, using the release build.
#
#   bash benches/scripts/put-get.sh                 # 1 GiB of random data
#   SIZE_MIB=256 DATA=text bash benches/scripts/put-get.sh   # 256 MiB of compressible text
#   STORES=s3 bash benches/scripts/put-get.sh       # on S3 (Garage on loopback), with S3 request counts
#
# Environment: SIZE_MIB (default 1024), DATA=random|text (default random), STORES=dir|s3 (default dir),
# SMALL_FILES (S3 only: how many 4 KiB files the small-file run puts; default 1000), BENCH_DIR (parent of the
# temporary directory; default $TMPDIR or /tmp — it needs about 3.5x SIZE_MIB of free space, twice that for s3).
# Prints one line per operation: throughput in MB/s (10^6 bytes per second of wall time) and peak RSS in MiB; on
# S3 also the S3 requests each operation made (PUT includes multipart parts), per GiB and per 1,000 small files —
# what an operation costs on a provider that bills per request.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

size_mib="${SIZE_MIB:-1024}"
data="${DATA:-random}"
case "$data" in random | text) ;; *) echo "DATA must be random or text, not '$data'" >&2; exit 2 ;; esac
[[ "$size_mib" =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_MIB must be a positive whole number, not '$size_mib'" >&2; exit 2; }
bytes=$((size_mib * 1024 * 1024))
stores="${STORES:-dir}"
case "$stores" in dir | s3) ;; *) echo "STORES must be dir or s3, not '$stores'" >&2; exit 2 ;; esac
small_files="${SMALL_FILES:-1000}"

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
# shellcheck source=benches/scripts/garage.sh
source "$repo_root/benches/scripts/garage.sh"
trap 'garage_stop; rm -rf "$work"' EXIT
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

init_args=()
if [[ $stores == s3 ]]; then
    garage_start "$work/garage" 6
    init_args=("${garage_stores[@]}")
fi
"$qsfs" --volume "$vol" init "${init_args[@]}" >&2

# requests_since BEFORE PER SCALE: the S3 requests made since BEFORE (a garage_requests line), scaled to PER.
requests_since() {
    local before=$1 per=$2 scale=$3
    awk -v b="$before" -v a="$(garage_requests)" -v per="$per" -v k="$scale" 'BEGIN {
        split(b, x); split(a, y); n = split("PUT GET LIST HEAD DELETE other", names)
        line = "  S3 requests per " per ":"; for (i = 1; i <= n; i++) line = line sprintf(" %s %.0f", names[i], (y[i] - x[i]) * k)
        print line }'
}

# run_timed NAME CMD...: runs CMD under /usr/bin/time -v and prints "NAME: MB/s, peak RSS" (and on S3 the
# requests it made per GiB).
run_timed() {
    local name="$1"
    shift
    local tf="$work/$name.time" start end before=""
    [[ $stores == s3 ]] && before=$(garage_requests)
    start=$(date +%s%N)
    /usr/bin/time -v -o "$tf" "$@"
    end=$(date +%s%N)
    local rss_kib
    rss_kib=$(awk -F': *' '/Maximum resident set size/ { print $2 }' "$tf")
    awk -v name="$name" -v bytes="$bytes" -v ns="$((end - start))" -v rss="$rss_kib" -v mib="$size_mib" -v data="$data" -v st="$stores" \
        'BEGIN { s = ns / 1e9; printf "%-4s %-3s %6d MiB %-6s %8.1f MB/s  %7.2f s  peak RSS %8.1f MiB\n", name, st, mib, data, bytes / 1e6 / s, s, rss / 1024 }'
    if [[ $stores == s3 ]]; then requests_since "$before" GiB "$(awk -v b="$bytes" 'BEGIN { print 1073741824 / b }')"; fi
}

run_timed put "$qsfs" --volume "$vol" put "$src" /bench.bin
run_timed get "$qsfs" --volume "$vol" get /bench.bin "$out"

if ! cmp "$src" "$out"; then
    echo "FAIL: the file read back differs from the one written" >&2
    exit 1
fi
echo "ok: output identical to input" >&2

# On S3: a tree of small files, put and read back, and the requests per 1,000 files.
if [[ $stores == s3 ]]; then
    mkdir -p "$work/small"
    for ((i = 0; i < small_files; i++)); do head -c 4096 /dev/urandom >"$work/small/f$i"; done
    for op in put get; do
        before=$(garage_requests)
        start=$(date +%s%N)
        if [[ $op == put ]]; then
            "$qsfs" --volume "$vol" put "$work/small" /small >&2
        else
            "$qsfs" --volume "$vol" get /small "$work/small-out" >&2
        fi
        end=$(date +%s%N)
        awk -v op="$op" -v n="$small_files" -v ns="$((end - start))" \
            'BEGIN { printf "%-4s s3  %6d files of 4 KiB  %8.1f files/s\n", op, n, n / (ns / 1e9) }'
        requests_since "$before" "1,000 files" "$(awk -v n="$small_files" 'BEGIN { print 1000 / n }')"
    done
    diff -r "$work/small" "$work/small-out" >&2 || { echo "FAIL: small files read back differ" >&2; exit 1; }
fi
