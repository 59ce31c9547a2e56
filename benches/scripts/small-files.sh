#!/usr/bin/env bash
# Small-file creates through a qsfs mount (each file: create, write 1 KiB, close), on two
# volumes side by side: the embedded default (six dir stores on this disk) and six local redis-servers
# (`appendonly yes`, `appendfsync always`, data in tmpfs: stores that do not share the volume's disk), each
# mounted by default (local-first close) and with `--sync-close` (every close durable on the stores). Not part of the test suite: it needs root (FUSE).
#
#   sudo bash benches/scripts/small-files.sh            # 1,500 files per run
#   FILES=300 bash benches/scripts/small-files.sh       # a quick look
#
# Environment: FILES (default 1500), BENCH_DIR (parent of the temporary directory; default $TMPDIR or /tmp).
# Prints a markdown table of files/s.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
files=${FILES:-1500}
[[ $files =~ ^[1-9][0-9]*$ ]] || { echo "FILES must be a positive whole number, not '$files'" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "run as root: the benchmark mounts FUSE filesystems" >&2; exit 2; }
# shellcheck source=benches/scripts/lib.sh
source "$repo_root/benches/scripts/lib.sh"
ensure_commands redis-server=redis-server redis-cli=redis-tools perl=perl-base python3=python3 fusermount3=fuse3

echo "building: cargo build --release -p qsfs" >&2
cargo build --release -p qsfs >&2
work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/qsfs-small-files.XXXXXX")"
shm="$(mktemp -d /dev/shm/qsfs-small-files.XXXXXX)"
cp "${CARGO_TARGET_DIR:-$repo_root/target}/release/qsfs" "$work/qsfs"
qsfs="$work/qsfs"
redis_pids=()
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then "$qsfs" umount "$work/mnt" >&2 || umount -l "$work/mnt" || true; fi
    for pid in "${redis_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work" "$shm"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$qsfs" --volume "$work/dir-vol" init >&2
redis_stores=()
for i in 0 1 2 3 4 5; do
    port=$(free_port)
    mkdir -p "$shm/$i"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$shm/$i" --appendonly yes --appendfsync always \
        --save "" >"$shm/$i.log" 2>&1 &
    redis_pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_stores+=(--store "redis://127.0.0.1:$port/0")
done
"$qsfs" --volume "$work/redis-vol" init "${redis_stores[@]}" >&2
mkdir -p "$work/mnt"

# run VOLUME MODE -> files/s
run() {
    local vol=$1 mode=$2 opts=()
    [[ $mode == sync-close ]] && opts=(--sync-close)
    "$qsfs" --volume "$work/$vol" mount "$work/mnt" "${opts[@]}" >&2
    local dir="$work/mnt/run-$mode"
    mkdir "$dir"
    local start end
    start=$(date +%s%N)
    perl -e 'my ($dir, $n) = @ARGV; my $buf = "x" x 1023 . "\n";
        for my $i (0 .. $n - 1) {
            open(my $h, ">", "$dir/f$i") or die "open: $!"; print $h $buf or die "write: $!"; close($h) or die "close: $!";
        }' "$dir" "$files"
    end=$(date +%s%N)
    "$qsfs" umount "$work/mnt" >&2
    awk -v n="$files" -v ns="$((end - start))" 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}

echo
echo "## qsfs small-file creates ($files files of 1 KiB; default: local-first close; --sync-close: each close durable on the stores), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| stores | default mount | --sync-close |"
echo "| --- | ---: | ---: |"
echo "| six dir stores on this disk (embedded default) | $(run dir-vol default) | $(run dir-vol sync-close) |"
echo "| six local redis-servers, AOF fsync always, data in tmpfs | $(run redis-vol default) | $(run redis-vol sync-close) |"
