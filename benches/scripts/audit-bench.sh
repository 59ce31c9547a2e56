#!/usr/bin/env bash
# Audit cost and repair throughput of qsfs, measured on real volumes (release build) and extrapolated per TiB.
#
#   bash benches/scripts/audit-bench.sh                       # dir and redis, 2 GiB of random data each
#   BACKENDS=dir DIR_MIB=4096 bash benches/scripts/audit-bench.sh
#
# Each backend gets a 4+2 volume with 4 MiB segments (the defaults) holding SIZE MiB of random data, then:
#   1. `qsfs audit` (sampled, default δ = 1%, P = 99% → c = 459) three times;
#   2. `qsfs audit --full` once (every shard fetched whole, its Merkle tree recomputed);
#   3. a whole store lost — dir: every shard file of store 0 deleted (marker kept), found by `qsfs audit`;
#      redis: the server of store 2 killed, a 7th server added (`qsfs store add`), `qsfs repair --grace 0s` —
#      and `qsfs repair` timed: MB/s of rebuilt shards written.
#
# How the per-TiB numbers are extrapolated (printed with the results):
#   - Sampled audit: its cost is c probes per store, independent of how much a store holds once it holds at least
#     c shards. With SIZE >= 459 x 4 MiB (1836 MiB) every store here holds more than c shards, so each audit
#     below is already exactly what one audit cycle costs on a 1 TiB volume (262,144 segments) or a 100 TiB one;
#     it grows only with the number of stores. Bytes per TiB per cycle = measured bytes / TiB stored.
#   - Full audit: reads every stored byte, so it scales linearly: measured seconds per stored byte x bytes stored
#     per TiB of data (the measured stored/logical ratio, 1.5 x blob overhead for 4+2).
#   - Repair: throughput is per byte rebuilt; a lost store of a 1 TiB volume holds 1/6 of 1.5 TiB of shards.
#   The page cache: dir stores are read back right after being written; the script drops the page cache before
#   timing when it can (root with a writable /proc/sys/vm/drop_caches) and says which it was. Redis serves from
#   memory over loopback TCP.
#
# Environment: BACKENDS ("dir redis"), DIR_MIB (2048), REDIS_MIB (2048), BENCH_DIR (parent of the temporary
# directory; needs about 3x DIR_MIB free, plus 3x REDIS_MIB of RAM and disk for redis).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

backends="${BACKENDS:-dir redis}"
dir_mib="${DIR_MIB:-2048}"
redis_mib="${REDIS_MIB:-2048}"
for n in "$dir_mib" "$redis_mib"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "sizes must be positive whole numbers of MiB, not '$n'" >&2; exit 2; }
done

need=()
command -v jq >/dev/null || need+=(jq)
[[ " $backends " == *" redis "* ]] && ! command -v redis-server >/dev/null && need+=(redis-server)
if ((${#need[@]} > 0)); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
    echo "+ ${sudo[*]} apt-get install -y ${need[*]}" >&2
    "${sudo[@]}" apt-get update >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${need[@]}" >&2
fi

echo "building: cargo build --release -p qsfs" >&2
cargo build --release -p qsfs >&2
qsfs="${CARGO_TARGET_DIR:-$repo_root/target}/release/qsfs"
[[ -x "$qsfs" ]] || { echo "no release binary at $qsfs" >&2; exit 1; }

work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/qsfs-audit-bench.XXXXXX")"
redis_pids=()
cleanup() {
    for pid in "${redis_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

TIB=$((1024 * 1024 * 1024 * 1024))

drop_caches() {
    sync
    if [[ -w /proc/sys/vm/drop_caches ]] && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        cache_state="cold (page cache dropped before timing)"
    else
        cache_state="warm (could not drop the page cache)"
    fi
}

# q VOL ARGS...: qsfs on a volume, stderr to the log.
q() {
    local vol="$1"
    shift
    "$qsfs" --volume "$vol" "$@" 2>>"$work/qsfs.log"
}

# report NAME VOL MIB LOSE_CMD...: runs the measurements on VOL (holding MIB MiB) and prints the results.
bench() {
    local name="$1" vol="$2" mib="$3"
    shift 3
    local logical=$((mib * 1024 * 1024))
    local stored stores per_store
    q "$vol" status --json >"$work/$name-status.json"
    stored=$(jq '[.stores[].bytes] | add' "$work/$name-status.json")
    stores=$(jq '.stores | length' "$work/$name-status.json")
    per_store=$(jq '[.stores[].shards] | min' "$work/$name-status.json")

    echo
    echo "== $name: $mib MiB of random data, 4+2, 4 MiB segments; $stores stores holding at least $per_store shards each"
    echo "   stored: $(awk -v b="$stored" 'BEGIN { printf "%.1f MiB", b / 1048576 }') (x$(awk -v b="$stored" -v l="$logical" 'BEGIN { printf "%.3f", b / l }') of the data)"
    [[ "$name" == dir ]] && echo "   page cache: $cache_state"

    local i
    for i in 1 2 3; do
        [[ "$name" == dir ]] && drop_caches
        q "$vol" audit --json >"$work/$name-audit-$i.json" || true
        jq -r --arg i "$i" '"   sampled audit #\($i): \(.totals.sampled) probes (\(.stores | map(.sampled) | min)..\(.stores | map(.sampled) | max) per store), \(.totals.bytes_read) bytes read, \(.duration_secs * 1000 | floor) ms, median probe \(.stores | map(.median_latency_ms // 0) | sort | .[length / 2 | floor] * 100 | floor / 100) ms, verdict \(.verdict)"' "$work/$name-audit-$i.json"
    done
    local s_bytes s_secs s_probes
    s_bytes=$(jq -s 'map(.totals.bytes_read) | add / length' "$work/$name"-audit-?.json)
    s_secs=$(jq -s 'map(.duration_secs) | add / length' "$work/$name"-audit-?.json)
    s_probes=$(jq -s 'map(.totals.sampled) | add / length' "$work/$name"-audit-?.json)

    [[ "$name" == dir ]] && drop_caches
    q "$vol" audit --full --json >"$work/$name-full.json" || true
    local f_bytes f_secs
    f_bytes=$(jq '.totals.bytes_read' "$work/$name-full.json")
    f_secs=$(jq '.duration_secs' "$work/$name-full.json")
    jq -r '"   full audit: \(.totals.sampled) shards, \(.totals.bytes_read) bytes read, \(.duration_secs * 100 | floor / 100) s, verdict \(.verdict)"' "$work/$name-full.json"

    # Lose a whole store, then repair.
    "$@"
    [[ "$name" == dir ]] && drop_caches
    local repair_args=(repair --json)
    [[ "$name" == redis ]] && repair_args+=(--grace 0s)
    q "$vol" "${repair_args[@]}" >"$work/$name-repair.json" || true
    jq -r '"   repair after losing a store: \(.rebuilt) shards rebuilt (\(.moved) to another store), \(.bytes_written) bytes written, \(.bytes_read) read, \(.duration_secs * 100 | floor / 100) s = \(.throughput_mb_s * 10 | floor / 10) MB/s of rebuilt shards; \(.remaining) left in the queue"' "$work/$name-repair.json"
    q "$vol" audit --full --json >"$work/$name-after.json" && echo "   audit --full after the repair: clean" || echo "   audit --full after the repair: NOT clean (see $work/$name-after.json)"

    echo "   per TiB of data (extrapolated as described in this script's header):"
    awk -v sb="$s_bytes" -v ss="$s_secs" -v sp="$s_probes" -v st="$stored" -v lg="$logical" -v fb="$f_bytes" -v fs="$f_secs" -v tib="$TIB" -v n="$stores" '
        BEGIN {
            ratio = st / lg
            printf "     sampled audit, one cycle on a 1 TiB volume: %d probes, %.1f MiB read (%.1f KiB per probe), %.2f s;\n", sp, sb / 1048576, sb / sp / 1024, ss
            printf "       that is %.2e of the %.2f TiB stored read per cycle, and the same %.1f MiB per cycle at any size beyond 459 segments\n", sb / (ratio * tib), ratio, sb / 1048576
            printf "     full audit (scrub): %.2f TiB read per TiB of data, %.0f MB/s measured -> %.1f h per TiB of data\n", fb / lg, fb / fs / 1e6, (ratio * tib) / (fb / fs) / 3600
        }'
    jq -r --argjson ratio "$(awk -v st="$stored" -v lg="$logical" 'BEGIN { print st / lg }')" --argjson n "$stores" --argjson tib "$TIB" \
        '"     repair of one lost store of a 1 TiB volume: \($ratio * $tib / $n / 1e9 | . * 10 | floor / 10) GB of shards at \(.throughput_mb_s * 10 | floor / 10) MB/s -> \($ratio * $tib / $n / 1e6 / .throughput_mb_s / 3600 | . * 100 | floor / 100) h"' \
        "$work/$name-repair.json"
}

lose_dir_store() {
    find "$work/dir-vol/stores/0/shards" -type f -delete
    q "$work/dir-vol" audit --json >"$work/dir-detect.json" || true
    jq -r '"   store 0 emptied (marker kept): the audit found \(.totals.missing) missing (escalated: \(.stores[0].escalated)), \(.queued_for_repair) queued"' "$work/dir-detect.json"
}

if [[ " $backends " == *" dir "* ]]; then
    echo "making $dir_mib MiB of random data" >&2
    head -c $((dir_mib * 1024 * 1024)) /dev/urandom >"$work/dir-input.bin"
    q "$work/dir-vol" init >/dev/null
    q "$work/dir-vol" put "$work/dir-input.bin" /data.bin
    rm -f "$work/dir-input.bin"
    cache_state="warm"
    bench dir "$work/dir-vol" "$dir_mib" lose_dir_store
fi

# start_redis I: one durable redis-server (append-only, fsync always, like the test servers) on a free port.
redis_ports=()
start_redis() {
    local i="$1" port dir="$work/redis-$1"
    mkdir -p "$dir"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 30000))
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly yes --appendfsync always \
            --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
        local pid=$!
        for _ in $(seq 50); do
            if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
                redis_pids[i]=$pid
                redis_ports[i]=$port
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    echo "could not start redis-server #$i" >&2
    exit 1
}

lose_redis_store() {
    kill -9 "${redis_pids[2]}"
    wait "${redis_pids[2]}" 2>/dev/null || true
    q "$work/redis-vol" store add "redis://127.0.0.1:${redis_ports[6]}/0" >/dev/null
    echo "   store 2's server killed; a 7th server added with \`qsfs store add\`; repair treats store 2 as lost (--grace 0s)"
}

if [[ " $backends " == *" redis "* ]]; then
    for i in 0 1 2 3 4 5 6; do start_redis "$i"; done
    args=()
    for i in 0 1 2 3 4 5; do args+=(--store "redis://127.0.0.1:${redis_ports[i]}/0"); done
    echo "making $redis_mib MiB of random data" >&2
    head -c $((redis_mib * 1024 * 1024)) /dev/urandom >"$work/redis-input.bin"
    q "$work/redis-vol" init "${args[@]}" >/dev/null
    q "$work/redis-vol" put "$work/redis-input.bin" /data.bin
    rm -f "$work/redis-input.bin"
    bench redis "$work/redis-vol" "$redis_mib" lose_redis_store
fi
