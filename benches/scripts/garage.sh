# shellcheck shell=bash
# A throwaway single-node Garage (S3) server for the benchmarks (sourced, not run): sqlite metadata in a work
# directory, free loopback ports, buckets and one key, and the S3 request counts from its request log (one line
# per request; the metrics endpoint needs a Garage built with `metrics`) so a benchmark can report what an
# operation would cost on a provider that bills per request.
#
#   garage_start DIR N    # starts it under DIR with buckets qsfs-0 … qsfs-(N-1); sets garage_pid,
#                         # garage_stores (the --store arguments) and garage_log
#   garage_requests       # prints "PUT GET LIST HEAD DELETE OTHER": S3 requests served so far
#   garage_stop

garage_bin() {
    command -v garage 2>/dev/null || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage"
}

garage_free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

garage_start() {
    local dir=$1 n=$2 bin rpc s3 id key secret i
    bin=$(garage_bin)
    [[ -x $bin ]] || { echo "no garage binary: cargo install --locked garage@2.5.0 --no-default-features --features bundled-libs,sqlite" >&2; return 1; }
    mkdir -p "$dir"
    rpc=$(garage_free_port) s3=$(garage_free_port)
    cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
TOML
    chmod 600 "$dir/garage.toml"
    garage_log="$dir/garage.log"
    RUST_LOG=garage=warn,garage_api_common=info "$bin" -c "$dir/garage.toml" server >"$garage_log" 2>&1 &
    garage_pid=$!
    for _ in $(seq 100); do "$bin" -c "$dir/garage.toml" status >/dev/null 2>&1 && break; sleep 0.1; done
    id=$("$bin" -c "$dir/garage.toml" node id -q | cut -d@ -f1)
    "$bin" -c "$dir/garage.toml" layout assign -z dc1 -c 10G "$id" >/dev/null
    "$bin" -c "$dir/garage.toml" layout apply --version 1 >/dev/null
    key="GK$(openssl rand -hex 12)" secret=$(openssl rand -hex 32)
    "$bin" -c "$dir/garage.toml" key import --yes -n bench "$key" "$secret" >/dev/null
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key" "$secret" >"$dir/credentials"
    chmod 600 "$dir/credentials"
    garage_stores=()
    for ((i = 0; i < n; i++)); do
        "$bin" -c "$dir/garage.toml" bucket create "qsfs-$i" >/dev/null
        "$bin" -c "$dir/garage.toml" bucket allow --read --write --owner "qsfs-$i" --key bench >/dev/null
        garage_stores+=(--store "s3://qsfs-$i?endpoint=http://127.0.0.1:$s3&region=garage&credentials-file=$dir/credentials")
    done
}

garage_requests() {
    # "… (key GK…) METHOD /bucket[/key][?query]"; error lines repeat the request "in response to" it.
    awk '
        /\(key / && !/in response to/ {
            method = $(NF - 1); target = $NF; q = index(target, "?"); query = q ? substr(target, q + 1) : ""
            path = q ? substr(target, 2, q - 2) : substr(target, 2); object = index(path, "/") > 0
            if (method == "PUT" && object) put++
            else if (method == "GET" && object) get++
            else if (method == "GET") list++
            else if (method == "HEAD") head++
            else if (method == "DELETE") del++
            else other++
        }
        END { printf "%d %d %d %d %d %d\n", put, get, list, head, del, other }' "$garage_log"
}

garage_stop() {
    if [[ -n ${garage_pid:-} ]]; then kill "$garage_pid" 2>/dev/null || true; wait "$garage_pid" 2>/dev/null || true; fi
}
