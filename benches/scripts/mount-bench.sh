#!/usr/bin/env bash
# The same filesystem workloads side by side on (a) a plain directory, (b) a gocryptfs mount and (c) a qsfs mount
# (release build; a fresh volume with the default six dir stores, 4+2, 4 MiB segments), all on the same disk, and
# each as a ratio to the plain directory. Not part of the test suite: it needs root (FUSE, drop_caches) and time.
#
#   sudo bash benches/scripts/mount-bench.sh                       # full run: 1 GiB files, 10,000 small files
#   SIZE_MIB=64 FILES=1000 FIO_RUNTIME=5 FIO_SIZE_MIB=64 bash benches/scripts/mount-bench.sh   # a quick look
#
# Environment:
#   SIZE_MIB       sequential file size (default 1024)
#   FILES          small files to create and stat (default 10000; 1 KiB each, 100 per directory)
#   FIO_SIZE_MIB   size of fio's file for the 4 KiB random read and write jobs (default 256)
#   FIO_RUNTIME    seconds per fio job (default 20)
#   TAR_SRC        directory to archive for the `tar x` workload (default: the tokio crate's sources from
#                  ~/.cargo/registry if there, else this repository's tracked files)
#   QSFS_MOUNT_OPTS  extra `qsfs mount` options, e.g. "--sync-close" or "--cache-size 1GiB"
#   STORES         dir (default: the six embedded dir stores) or s3 (six buckets on a local Garage server on
#                  loopback, see garage.sh; the S3 requests of the whole run are printed after the table)
#   CP_TREES       directories to copy with `cp -a` (default "/usr/share/zoneinfo /usr/include", those present)
#   BENCH_DIR      parent of the temporary directory (default $TMPDIR or /tmp); needs about 6x SIZE_MIB free
#
# Workloads, each timed on wall clock and followed by `sync`:
#   - sequential write of SIZE_MIB with fsync at the end (dd conv=fsync), random and compressible data;
#   - sequential read of both files after `echo 3 > /proc/sys/vm/drop_caches` and a remount of the FUSE
#     filesystems (so neither qsfs's read cache nor the page cache holds them);
#   - fio 4 KiB random reads (cold, as above) and random writes (buffered, fsync at the end), psync engine;
#   - creating FILES small files (each written and closed), then stat-ing them cold; creating FILES empty files;
#   - `tar x` of TAR_SRC's tarball; `cp -a` of /usr/share/zoneinfo and of /usr/include (CP_TREES), in entries/s.
# Prints a markdown table: workload | plain | gocryptfs | qsfs | qsfs/plain | gocryptfs/plain | qsfs/gocryptfs
# (rates: higher is better, so a ratio below 1 is slower), with the date and the machine.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

size_mib=${SIZE_MIB:-1024}
files=${FILES:-10000}
fio_size_mib=${FIO_SIZE_MIB:-256}
fio_runtime=${FIO_RUNTIME:-20}
for v in size_mib files fio_size_mib fio_runtime; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive whole number, not '${!v}'" >&2; exit 2; }
done
read -r -a qsfs_mount_opts <<<"${QSFS_MOUNT_OPTS:-}"
stores=${STORES:-dir}
case "$stores" in dir | s3) ;; *) echo "STORES must be dir or s3, not '$stores'" >&2; exit 2 ;; esac

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root: the benchmark mounts FUSE filesystems and drops the page cache" >&2
    exit 2
fi
[[ -e /dev/fuse ]] || { echo "/dev/fuse is missing" >&2; exit 2; }

# shellcheck source=benches/scripts/lib.sh
source "$repo_root/benches/scripts/lib.sh"
ensure_commands fio=fio gocryptfs=gocryptfs fusermount3=fuse3 perl=perl-base

echo "building: cargo build --release -p qsfs" >&2
cargo build --release -p qsfs >&2
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
work="$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/qsfs-mount-bench.XXXXXX")"
work=$(realpath "$work")
# A private copy: a rebuild during the run cannot swap the binary under the mount.
mkdir "$work/bin"
cp "$target_dir/release/qsfs" "$work/bin/qsfs"
qsfs="$work/bin/qsfs"

log() { printf '%s\n' "$*" >&2; }
now_ns() { date +%s%N; }
is_mounted() { awk -v mp="$1" '$2 == mp && $3 ~ /^fuse/ { f = 1 } END { exit !f }' /proc/self/mounts; }

qsfs_pid=""
unmount_all() {
    if is_mounted "$work/qsfs"; then "$qsfs" umount "$work/qsfs" >&2 || umount -l "$work/qsfs" || true; fi
    if [[ -n $qsfs_pid ]]; then wait "$qsfs_pid" 2>/dev/null || true; qsfs_pid=""; fi
    if is_mounted "$work/gocryptfs"; then fusermount3 -u "$work/gocryptfs" || umount -l "$work/gocryptfs" || true; fi
}
# shellcheck source=benches/scripts/garage.sh
source "$repo_root/benches/scripts/garage.sh"
cleanup() {
    unmount_all
    garage_stop
    rm -rf "$work"
}
trap cleanup EXIT

wait_mounted() {
    local i
    for ((i = 0; i < 300; i++)); do
        if is_mounted "$1" && ls "$1" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "$1 did not get mounted"
    return 1
}

mount_qsfs() {
    "$qsfs" --volume "$work/qsfs-vol" mount "$work/qsfs" --foreground "${qsfs_mount_opts[@]}" \
        >>"$work/qsfs-mount.log" 2>&1 &
    qsfs_pid=$!
    wait_mounted "$work/qsfs"
}
mount_gocryptfs() {
    gocryptfs -q -nosyslog -passfile "$work/gocryptfs.pass" "$work/gocryptfs.cipher" "$work/gocryptfs"
    wait_mounted "$work/gocryptfs"
}
mount_all() {
    mount_gocryptfs
    mount_qsfs
}
# Cold caches: FUSE filesystems remounted (qsfs's read cache emptied), then the kernel's caches dropped.
cold() {
    unmount_all
    sync
    echo 3 >/proc/sys/vm/drop_caches
    mount_all
}

# --- setup ---------------------------------------------------------------------------------------------------
mkdir -p "$work/plain" "$work/gocryptfs" "$work/gocryptfs.cipher" "$work/qsfs"
head -c 32 /dev/urandom | base64 >"$work/gocryptfs.pass"
gocryptfs -init -q -passfile "$work/gocryptfs.pass" "$work/gocryptfs.cipher" >&2
init_args=()
if [[ $stores == s3 ]]; then
    garage_start "$work/garage" 6
    init_args=("${garage_stores[@]}")
fi
"$qsfs" --volume "$work/qsfs-vol" init "${init_args[@]}" >&2
mount_all
targets=(plain gocryptfs qsfs)

bytes=$((size_mib * 1024 * 1024))
log "making $size_mib MiB of random and of compressible data in $work"
head -c "$bytes" /dev/urandom >"$work/random.bin"
# Varied but compressible text (awk ends by itself; truncate trims the last line).
awk -v n="$bytes" 'BEGIN { for (i = 0; w < n; i++) { l = sprintf("%09d the quick brown fox %d jumps over the lazy dog %d\n", i, i % 97, i % 13); printf "%s", l; w += length(l) } }' >"$work/text.bin"
truncate -s "$bytes" "$work/text.bin"

tar_src=${TAR_SRC:-}
if [[ -z $tar_src ]]; then
    tar_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tokio-[0-9]* 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [[ -n $tar_src ]]; then
    tar -C "$(dirname "$tar_src")" -cf "$work/src.tar" "$(basename "$tar_src")"
    tar_name=$(basename "$tar_src")
else
    git -C "$repo_root" archive --format=tar -o "$work/src.tar" HEAD
    tar_name="qsfs sources"
fi
tar_files=$(tar -tf "$work/src.tar" | grep -vc '/$' || true)
tar_mib=$(du -m "$work/src.tar" | cut -f1)

# --- results ---------------------------------------------------------------------------------------------------
declare -A result
rows=()
# record ROW TARGET VALUE
record() {
    if [[ -z ${result["$1|plain"]+x} && -z ${result["$1|gocryptfs"]+x} && -z ${result["$1|qsfs"]+x} ]]; then
        rows+=("$1")
    fi
    result["$1|$2"]=$3
    log "  $2: $1 = $3"
}
# rate AMOUNT NS: AMOUNT per second, 1 decimal.
rate() { awk -v a="$1" -v ns="$2" 'BEGIN { printf "%.1f", a / (ns / 1e9) }'; }

# --- workloads -------------------------------------------------------------------------------------------------
for data in random text; do
    row="seq write $size_mib MiB $data + fsync (MB/s)"
    log "$row"
    for t in "${targets[@]}"; do
        start=$(now_ns)
        dd if="$work/$data.bin" of="$work/$t/seq-$data.bin" bs=1M conv=fsync status=none
        end=$(now_ns)
        record "$row" "$t" "$(rate "$((bytes / 1000000))" "$((end - start))")"
    done
done
cold
for data in random text; do
    row="seq read $size_mib MiB $data, cold (MB/s)"
    log "$row"
    for t in "${targets[@]}"; do
        start=$(now_ns)
        dd if="$work/$t/seq-$data.bin" of=/dev/null bs=1M status=none
        end=$(now_ns)
        record "$row" "$t" "$(rate "$((bytes / 1000000))" "$((end - start))")"
    done
done
for t in "${targets[@]}"; do rm -f "$work/$t"/seq-*.bin; done

# fio terse output (version 3): field 8 is read IOPS, field 49 write IOPS; the read completion latency
# percentiles are fields 18-37 as "P%=USEC".
fio_job() { # DIR RW -> terse line
    fio --name=bench --directory="$1" --filename=fio.dat --rw="$2" --bs=4k --size="${fio_size_mib}M" \
        --runtime="$fio_runtime" --time_based --ioengine=psync --end_fsync=1 --output-format=terse |
        tail -n 1
}
terse_field() { cut -d';' -f"$1" <<<"$2"; }
terse_median_us() { tr ';' '\n' <<<"$1" | sed -n '18,37p' | awk -F= '$1 == "50.000000%" { print $2; exit }'; }
log "fio: laying out ${fio_size_mib} MiB files"
for t in "${targets[@]}"; do
    dd if=/dev/urandom of="$work/$t/fio.dat" bs=1M count="$fio_size_mib" conv=fsync status=none
done
cold
row="fio 4 KiB random read, cold, ${fio_runtime} s (IOPS)"
median_row="fio 4 KiB random read, cold: median latency (µs; lower is better)"
log "$row"
for t in "${targets[@]}"; do
    line=$(fio_job "$work/$t" randread)
    record "$row" "$t" "$(terse_field 8 "$line")"
    record "$median_row" "$t" "$(terse_median_us "$line")"
done
row="fio 4 KiB random write + fsync at end, ${fio_runtime} s (IOPS)"
log "$row"
for t in "${targets[@]}"; do record "$row" "$t" "$(terse_field 49 "$(fio_job "$work/$t" randwrite)")"; done
for t in "${targets[@]}"; do rm -f "$work/$t/fio.dat"; done

# Small files: one perl process creates (write + close) or stats them all, so process start-up is not measured.
small_files() { # DIR create|stat
    perl -e '
        my ($dir, $n, $mode) = @ARGV;
        my $buf = "x" x 1023 . "\n";
        for my $i (0 .. $n - 1) {
            my $d = sprintf("%s/d%03d", $dir, int($i / 100));
            my $f = sprintf("%s/f%05d", $d, $i);
            if ($mode eq "create") {
                if ($i % 100 == 0) { mkdir $d or die "mkdir $d: $!" }
                open(my $h, ">", $f) or die "open $f: $!";
                print $h $buf or die "write $f: $!";
                close($h) or die "close $f: $!";
            } else {
                my @st = stat($f) or die "stat $f: $!";
                $st[7] == 1024 or die "$f has size $st[7]";
            }
        }' "$1" "$files" "$2"
}
empty_files() { # DIR
    perl -e '
        my ($dir, $n) = @ARGV;
        for my $i (0 .. $n - 1) {
            my $d = sprintf("%s/d%03d", $dir, int($i / 100));
            if ($i % 100 == 0) { mkdir $d or die "mkdir $d: $!" }
            open(my $h, ">", sprintf("%s/f%05d", $d, $i)) or die "open: $!";
            close($h) or die "close: $!";
        }' "$1" "$files"
}
row="create $files empty files (files/s)"
log "$row"
for t in "${targets[@]}"; do
    mkdir "$work/$t/empty"
    start=$(now_ns)
    empty_files "$work/$t/empty"
    sync
    end=$(now_ns)
    record "$row" "$t" "$(rate "$files" "$((end - start))")"
done
for t in "${targets[@]}"; do rm -rf "$work/$t/empty"; done

row="create $files files of 1 KiB (files/s)"
log "$row"
for t in "${targets[@]}"; do
    mkdir "$work/$t/small"
    start=$(now_ns)
    small_files "$work/$t/small" create
    sync
    end=$(now_ns)
    record "$row" "$t" "$(rate "$files" "$((end - start))")"
done
cold
row="stat $files files, cold (files/s)"
log "$row"
for t in "${targets[@]}"; do
    start=$(now_ns)
    small_files "$work/$t/small" stat
    end=$(now_ns)
    record "$row" "$t" "$(rate "$files" "$((end - start))")"
done

row="tar x $tar_name ($tar_files files, $tar_mib MiB) (files/s)"
log "$row"
for t in "${targets[@]}"; do
    mkdir "$work/$t/tarx"
    start=$(now_ns)
    tar -C "$work/$t/tarx" -xf "$work/src.tar"
    sync
    end=$(now_ns)
    record "$row" "$t" "$(rate "$tar_files" "$((end - start))")"
done
# The extracted trees must match the plain one.
for t in gocryptfs qsfs; do
    diff -r "$work/plain/tarx" "$work/$t/tarx" >/dev/null || { log "FAIL: tar x on $t differs from plain"; exit 1; }
done

# cp -a of real trees (the source read from the page cache after the first copy), entries per second.
read -r -a cp_trees <<<"${CP_TREES:-/usr/share/zoneinfo /usr/include}"
for tree in "${cp_trees[@]}"; do
    [[ -d $tree ]] || { log "skipping cp -a $tree: not a directory"; continue; }
    entries=$(find "$tree" | wc -l)
    tree_mib=$(du -sm "$tree" | cut -f1)
    row="cp -a $tree ($entries entries, $tree_mib MiB) (entries/s)"
    log "$row"
    cp -a "$tree" "$work/warm-up-copy" && rm -rf "$work/warm-up-copy"
    for t in "${targets[@]}"; do
        dest="$work/$t/cp-$(basename "$tree")"
        start=$(now_ns)
        cp -a "$tree" "$dest"
        sync
        end=$(now_ns)
        record "$row" "$t" "$(rate "$entries" "$((end - start))")"
        diff -r --no-dereference "$tree" "$dest" >/dev/null || { log "FAIL: cp -a $tree on $t differs"; exit 1; }
    done
done

# --- report ----------------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mem_gib=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
read -r dev fstype < <(findmnt -n -o SOURCE,FSTYPE -T "$work")
disk=$(lsblk -d -n -o NAME,SIZE,ROTA "$dev" 2>/dev/null || echo "$dev ? ?")
echo
echo "## qsfs mount vs gocryptfs vs a plain directory"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), ${mem_gib} GiB memory, kernel $(uname -r)"
echo "- disk: $dev ($fstype; $(echo "$disk" | awk '{ printf "%s, rota=%s", $2, $3 }')), all three on it under $(dirname "$work")"
echo "- qsfs $(git -C "$repo_root" describe --always --dirty 2>/dev/null || echo '?') release build, 4+2 over $([[ $stores == s3 ]] && echo '6 S3 buckets on a loopback Garage server' || echo '6 dir stores'), 4 MiB segments, mount options: ${QSFS_MOUNT_OPTS:-(none)}; $(gocryptfs -version | head -n 1 | cut -d';' -f1); $(fio --version)"
echo "- sizes: SIZE_MIB=$size_mib FILES=$files FIO_SIZE_MIB=$fio_size_mib FIO_RUNTIME=$fio_runtime"
echo
echo "| workload | plain | gocryptfs | qsfs | qsfs/plain | gocryptfs/plain | qsfs/gocryptfs |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for row in "${rows[@]}"; do
    p=${result["$row|plain"]} g=${result["$row|gocryptfs"]} q=${result["$row|qsfs"]}
    echo "| $row | $p | $g | $q | $(ratio "$q" "$p") | $(ratio "$g" "$p") | $(ratio "$q" "$g") |"
done
if [[ $stores == s3 ]]; then
    read -r put get list head del other < <(garage_requests)
    echo
    echo "S3 requests of the whole qsfs run: PUT $put, GET $get, LIST $list, HEAD $head, DELETE $del, other $other"
fi
