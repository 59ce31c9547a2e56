#!/bin/sh
# One-time setup of the compose variant's Garage through its admin API (v2): give the node a role and apply the
# layout, import the access key from the credentials file qsfs uses, create the buckets qsfs-0 … qsfs-5 and let the
# key use them. Idempotent: a second run finds everything in place. Writes /ready/garage when done.
set -eu
api=${GARAGE_ADMIN:-http://garage:3903}
creds=${CREDENTIALS:-/etc/qsfs/s3-credentials}
buckets=${BUCKETS:-6}
capacity=${GARAGE_CAPACITY:-100000000000}

call() { # call ENDPOINT [JSON]: POST when a body is given; prints the reply, fails on HTTP errors
    if [ $# -gt 1 ]; then
        curl -fsS -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" -H 'Content-Type: application/json' -d "$2" "$api/v2/$1"
    else
        curl -fsS -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" "$api/v2/$1"
    fi
}
field() { # field NAME: the first string value of "NAME" in the JSON on stdin
    grep -o "\"$1\": *\"[^\"]*\"" | head -n 1 | sed 's/.*: *"\(.*\)"/\1/'
}
key_value() { # key_value NAME: `NAME = value` from the credentials file
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$creds" | head -n 1
}

i=0
until call GetClusterHealth >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 60 ] || { echo "garage's admin API did not answer at $api" >&2; exit 1; }
    sleep 1
done

if call GetClusterLayout | tr -d '\n ' | grep -q '"version":0,'; then
    node=$(call GetClusterStatus | field id)
    call UpdateClusterLayout "{\"roles\":[{\"id\":\"$node\",\"zone\":\"dc1\",\"capacity\":$capacity,\"tags\":[]}]}" >/dev/null
    call ApplyClusterLayout '{"version":1}' >/dev/null
    echo "layout applied: node $node"
fi

key_id=$(key_value aws_access_key_id)
secret=$(key_value aws_secret_access_key)
[ -n "$key_id" ] && [ -n "$secret" ] || { echo "$creds lacks aws_access_key_id or aws_secret_access_key" >&2; exit 1; }
if ! call "GetKeyInfo?id=$key_id" >/dev/null 2>&1; then
    call ImportKey "{\"accessKeyId\":\"$key_id\",\"secretAccessKey\":\"$secret\",\"name\":\"qsfs\"}" >/dev/null
    echo "key $key_id imported"
fi

n=0
while [ $n -lt "$buckets" ]; do
    name=qsfs-$n
    id=$(call "GetBucketInfo?globalAlias=$name" 2>/dev/null | field id || true)
    if [ -z "$id" ]; then
        id=$(call CreateBucket "{\"globalAlias\":\"$name\"}" | field id)
        echo "bucket $name created"
    fi
    call AllowBucketKey "{\"bucketId\":\"$id\",\"accessKeyId\":\"$key_id\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}" >/dev/null
    n=$((n + 1))
done
ready=${READY_DIR:-/ready}
mkdir -p "$ready" && touch "$ready/garage"
echo "garage ready: $buckets buckets"
