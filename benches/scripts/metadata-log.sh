#!/usr/bin/env bash
# The metadata log's cost and the restore it buys, side by side in one run:
#   - replication overhead: the current qsfs (default local-first close, and with --sync-close, where every close
#     is durable on the stores as in the baseline) against a baseline build without the log (BASELINE, default the
#     last commit before it), on the embedded default volume: 1 KiB creates through a mount (rate of the closes,
#     and with the uploads drained by the unmount counted in), an fsync loop (4 KiB append + fsync), and a
#     sequential write of SIZE random bytes + fsync;
#   - restore: a volume of RESTORE_FILES small files (put with the CLI), its directory deleted, `qsfs restore` from
#     one store: wall time, and the bytes of metadata objects one store holds (what a restore reads).
# Not part of the test suite: it needs root (FUSE) and takes minutes.
#
#   sudo bash benches/scripts/metadata-log.sh
#   CREATES=300 FSYNCS=300 SIZE=256MiB RESTORE_FILES=2000 bash benches/scripts/metadata-log.sh   # a quick look
#
# Environment: CREATES (1000), FSYNCS (2000), SIZE (1GiB), RESTORE_FILES (10000; repeat with 100000), BASELINE
# (68f3b8d), BENCH_DIR (parent of the temporary directory; default $TMPDIR or /tmp).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
creates=${CREATES:-1000}
fsyncs=${FSYNCS:-2000}
size=${SIZE:-1GiB}
restore_files=${RESTORE_FILES:-10000}
baseline=${BASELINE:-68f3b8d}
[[ $(id -u) -eq 0 ]] || { echo "run as root: the benchmark mounts FUSE filesystems" >&2; exit 2; }
# shellcheck source=benches/scripts/lib.sh
source "$repo_root/benches/scripts/lib.sh"
ensure_commands python3=python3 fusermount3=fuse3

work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/qsfs-metalog.XXXXXX")"
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then umount -l "$work/mnt" || true; fi
    git -C "$repo_root" worktree remove --force "$work/baseline-src" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "building: the current tree and $baseline (release)" >&2
cargo build --release -p qsfs >&2
cp "${CARGO_TARGET_DIR:-$repo_root/target}/release/qsfs" "$work/qsfs-current"
git worktree add --detach "$work/baseline-src" "$baseline" >&2
(cd "$work/baseline-src" && CARGO_TARGET_DIR="$work/baseline-target" cargo build --release -p qsfs >&2)
cp "$work/baseline-target/release/qsfs" "$work/qsfs-baseline"
python3 - "$work/random.bin" "$size" <<'EOF'
import os, sys
units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
text = sys.argv[2]
n = next((int(text[:-3]) * m for u, m in units.items() if text.endswith(u)), None) or int(text)
with open(sys.argv[1], "wb") as f:
    left = n
    while left:
        chunk = min(left, 16 << 20)
        f.write(os.urandom(chunk))
        left -= chunk
EOF
mkdir -p "$work/mnt"

# mounted BIN VOL: mounts VOL (creating the embedded default) with BIN and the options in $mount_opts
mount_opts=()
mounted() { "$1" --volume "$2" mount "$work/mnt" "${mount_opts[@]}" >&2; }
unmount() { "$1" umount "$work/mnt" >&2; }
now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" "$@"; }

creates_per_s() { create_files "$@" closes; }
creates_drained_per_s() { create_files "$@" drained; }

# create_files BIN VOL closes|drained: files/s, timed to the last close or to the end of the unmount's drain
create_files() {
    local bin=$1 vol=$2 until=$3 start end
    mounted "$bin" "$vol"
    mkdir "$work/mnt/creates"
    start=$(now)
    python3 - "$work/mnt/creates" "$creates" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
block = os.urandom(1024)
for i in range(n):
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(block)
EOF
    end=$(now)
    unmount "$bin"
    if [[ $until == drained ]]; then end=$(now); fi
    rate "$creates" "$start" "$end"
}

fsyncs_per_s() {
    local bin=$1 vol=$2 start end
    mounted "$bin" "$vol"
    start=$(now)
    python3 - "$work/mnt/log" "$fsyncs" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
block = os.urandom(4096)
for _ in range(int(sys.argv[2])):
    os.write(fd, block)
    os.fsync(fd)
os.close(fd)
EOF
    end=$(now)
    unmount "$bin"
    rate "$fsyncs" "$start" "$end"
}

write_mb_per_s() {
    local bin=$1 vol=$2 start end bytes
    bytes=$(stat -c %s "$work/random.bin")
    mounted "$bin" "$vol"
    start=$(now)
    dd if="$work/random.bin" of="$work/mnt/big" bs=1M conv=fsync status=none
    end=$(now)
    unmount "$bin"
    python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6 / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" \
        "$bytes" "$start" "$end"
}

echo "| workload | without the log ($baseline) | with the log, default | ratio | with the log, --sync-close | ratio |"
echo "|---|---|---|---|---|---|"
ratio() { python3 -c "import sys; print(f'{float(sys.argv[2]) / float(sys.argv[1]):.2f}')" "$@"; }
for workload in creates_per_s creates_drained_per_s fsyncs_per_s write_mb_per_s; do
    results=()
    for run in baseline current current-sync; do
        mount_opts=()
        bin="$work/qsfs-current"
        case $run in
            baseline) bin="$work/qsfs-baseline" ;;
            current-sync) mount_opts=(--sync-close) ;;
        esac
        sync; echo 3 > /proc/sys/vm/drop_caches
        results+=("$($workload "$bin" "$work/vol-$run-$workload")")
    done
    case $workload in
        creates_per_s) label="1 KiB creates through the mount ($creates, files/s to the last close)" ;;
        creates_drained_per_s) label="1 KiB creates, uploads drained by the unmount ($creates, files/s)" ;;
        fsyncs_per_s) label="4 KiB append + fsync loop ($fsyncs, fsyncs/s)" ;;
        *) label="sequential write of $size random + fsync (MB/s)" ;;
    esac
    echo "| $label | ${results[0]} | ${results[1]} | $(ratio "${results[0]}" "${results[1]}") |" \
        "${results[2]} | $(ratio "${results[0]}" "${results[2]}") |"
done

# --- restore --------------------------------------------------------------------------------------------------
q="$work/qsfs-current"
stores=()
for i in 0 1 2 3 4 5; do stores+=(--store "dir:$work/rstores/$i"); done
"$q" --volume "$work/rvol" init "${stores[@]}" >&2
python3 - "$work/tree" "$restore_files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}"), "wb") as f:
        f.write(os.urandom(100))
EOF
start=$(now)
"$q" --volume "$work/rvol" put "$work/tree" /tree >&2
end=$(now)
put_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$end")
cp "$work/rvol/key" "$work/key"
rm -rf "$work/rvol"
sync; echo 3 > /proc/sys/vm/drop_caches
start=$(now)
"$q" --volume "$work/rvol" restore --store "dir:$work/rstores/0" --key-file "$work/key" >&2
end=$(now)
restore_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$end")
log_bytes=$(python3 - "$work/rstores/0" <<'EOF'
import os, sys
total = 0
for d, _, files in os.walk(sys.argv[1]):
    for name in files:
        p = os.path.join(d, name)
        with open(p, "rb") as f:
            if f.read(8) in (b"QSFSLOG1", b"QSFSHED1", b"QSFSLSE1", b"QSFSVOL1", b"QSFSSNP1", b"QSFSSNP2"):
                total += os.path.getsize(p)
print(total)
EOF
)
"$q" --volume "$work/rvol" fsck >&2
echo
echo "| files | put (s) | restore (s) | metadata objects on one store (bytes) |"
echo "|---|---|---|---|"
echo "| $restore_files | $put_s | $restore_s | $log_bytes |"
