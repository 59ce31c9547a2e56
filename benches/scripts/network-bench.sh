#!/usr/bin/env bash
# Network stores next to dir stores, in one run (release build, 4+2, 4 MiB segments, default mount options):
#   dir      the embedded default: six dir stores on this disk;
#   redis    six local redis-servers (AOF, appendfsync always, data in tmpfs) on loopback;
#   redis+d  the same servers reached through a user-space TCP proxy that holds every chunk DELAY_MS in each
#            direction (a simulated network round trip of 2 x DELAY_MS; `tc netem` is not available here).
# Workloads on each: sequential write of SIZE_MIB random data + fsync; sequential read of it, cold (remounted,
# page cache dropped, once the redis-servers finished rewriting their append-only files); `cp -a` of CP_TREE
# (close is local-first: it waits for no store), then the time until the upload queue is empty (`qsfs umount`
# drains it).
#
#   sudo bash benches/scripts/network-bench.sh
#   SIZE_MIB=64 DELAY_MS=5 CP_TREE=/usr/share/zoneinfo bash benches/scripts/network-bench.sh
#
# Environment: SIZE_MIB (256), DELAY_MS (5), CP_TREE (/usr/share/zoneinfo), BENCH_DIR (parent of the temporary
# directory). Prints a markdown table and the ratios the speed issue asks for.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
size_mib=${SIZE_MIB:-256}
delay_ms=${DELAY_MS:-5}
cp_tree=${CP_TREE:-/usr/share/zoneinfo}
for v in size_mib delay_ms; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number, not '${!v}'" >&2; exit 2; }
done
[[ -d $cp_tree ]] || { echo "CP_TREE $cp_tree is not a directory" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "run as root: the benchmark mounts FUSE filesystems and drops the page cache" >&2; exit 2; }

# shellcheck source=benches/scripts/lib.sh
source "$repo_root/benches/scripts/lib.sh"
ensure_commands redis-server=redis-server redis-cli=redis-tools python3=python3 fusermount3=fuse3

echo "building: cargo build --release -p qsfs" >&2
cargo build --release -p qsfs >&2
work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/qsfs-network-bench.XXXXXX")"
shm="$(mktemp -d /dev/shm/qsfs-network-bench.XXXXXX)"
cp "${CARGO_TARGET_DIR:-$repo_root/target}/release/qsfs" "$work/qsfs"
qsfs="$work/qsfs"
pids=()
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then "$qsfs" umount "$work/mnt" >&2 || umount -l "$work/mnt" || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work" "$shm"
}
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }
now_ns() { date +%s%N; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A TCP proxy LISTEN -> TARGET that delivers each chunk DELAY_MS after it arrived, in order, both directions.
delay_proxy() { # LISTEN_PORT TARGET_PORT
    python3 - "$1" "$2" "$delay_ms" <<'PY' &
import asyncio, sys
listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000

async def pipe(reader, writer):
    q = asyncio.Queue()
    async def feed():
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(1 << 20)
            await q.put((loop.time() + delay, data))
            if not data:
                return
    async def drain():
        loop = asyncio.get_running_loop()
        while True:
            at, data = await q.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
    await asyncio.gather(feed(), drain())

async def handle(cr, cw):
    sr, sw = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(cr, sw), pipe(sr, cw), return_exceptions=True)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
    pids+=($!)
}

"$qsfs" --volume "$work/dir" init >&2
direct=() delayed=() ports=()
for i in 0 1 2 3 4 5; do
    port=$(free_port)
    ports+=("$port")
    mkdir -p "$shm/$i"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$shm/$i" --appendonly yes --appendfsync always \
        --save "" >"$shm/$i.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    proxy=$(free_port)
    delay_proxy "$proxy" "$port"
    direct+=(--store "redis://127.0.0.1:$port/0")
    delayed+=(--store "redis://127.0.0.1:$proxy/1")
done
sleep 1
"$qsfs" --volume "$work/redis" init "${direct[@]}" >&2
"$qsfs" --volume "$work/redis+d" init "${delayed[@]}" >&2
mkdir -p "$work/mnt"
head -c "$((size_mib << 20))" /dev/urandom >"$work/random.bin"
entries=$(find "$cp_tree" | wc -l)
cp -a "$cp_tree" "$work/warm" && rm -rf "$work/warm"

mount_vol() { "$qsfs" --volume "$work/$1" mount "$work/mnt" >&2; }
umount_vol() { "$qsfs" umount "$work/mnt" >&2; }
# A redis-server rewrites its append-only file in the background once it has doubled (here: right after the
# write), compressing the whole dataset on one of the two cores for a second or more. The cold read waits for
# those rewrites to end, so it measures qsfs's read path rather than the servers' housekeeping.
redis_quiet() {
    local port
    for port in "${ports[@]}"; do
        while redis-cli -p "$port" info persistence | grep -qE '^aof_rewrite_(in_progress|scheduled):1'; do
            sleep 0.2
        done
    done
}
rate() { awk -v a="$1" -v ns="$2" 'BEGIN { printf "%.1f", a / (ns / 1e9) }'; }
secs() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }
declare -A r
for vol in dir redis redis+d; do
    log "== $vol"
    mount_vol "$vol"
    s=$(now_ns); dd if="$work/random.bin" of="$work/mnt/seq.bin" bs=1M conv=fsync status=none; e=$(now_ns)
    r[$vol,write]=$(rate "$((size_mib * 1048576 / 1000000))" "$((e - s))")
    umount_vol
    redis_quiet
    sync; echo 3 >/proc/sys/vm/drop_caches
    mount_vol "$vol"
    s=$(now_ns); dd if="$work/mnt/seq.bin" of=/dev/null bs=1M status=none; e=$(now_ns)
    r[$vol,read]=$(rate "$((size_mib * 1048576 / 1000000))" "$((e - s))")
    s=$(now_ns); cp -a "$cp_tree" "$work/mnt/tree"; e=$(now_ns)
    r[$vol,cp]=$(secs "$((e - s))")
    s=$(now_ns); umount_vol; e=$(now_ns)
    r[$vol,drain]=$(secs "$((e - s))")
    mount_vol "$vol"
    diff -r --no-dereference "$cp_tree" "$work/mnt/tree" >/dev/null || { log "FAIL: cp -a on $vol differs"; exit 1; }
    cmp "$work/random.bin" "$work/mnt/seq.bin" || { log "FAIL: seq.bin on $vol differs"; exit 1; }
    umount_vol
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "## qsfs on network stores next to dir stores, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, qsfs $(git -C "$repo_root" describe --always --dirty 2>/dev/null || echo '?')"
echo
echo "| stores | seq write $size_mib MiB + fsync (MB/s) | seq read, cold (MB/s) | cp -a $cp_tree ($entries entries) (s) | then umount, queue drained (s) |"
echo "| --- | ---: | ---: | ---: | ---: |"
for vol in dir redis redis+d; do
    echo "| $vol | ${r[$vol,write]} | ${r[$vol,read]} | ${r[$vol,cp]} | ${r[$vol,drain]} |"
done
echo
echo "- cold read, redis / dir: $(ratio "${r[redis,read]}" "${r[dir,read]}") (target >= 0.8)"
echo "- cp -a with ${delay_ms} ms each way / without: $(ratio "${r[redis+d,cp]}" "${r[redis,cp]}") (target <= 2)"
