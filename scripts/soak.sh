#!/usr/bin/env bash
# Soak test (not run in CI): a local cluster under chat-bench load for a given
# time, recording every node's RSS and open descriptors over time.
#
#   scripts/soak.sh [MINUTES] [NODES]        (defaults: 30 minutes, 2 nodes)
#
# Settings (environment): SOAK_DIR (default /tmp/chat-soak), SOAK_USERS (1000),
# SOAK_RATE (total msgs/s, open loop; default 20000), SOAK_INTERVAL (sampling
# seconds, default 10), SOAK_KEEP_DB (set: keep the default chat_soak database),
# plus scripts/cluster.sh's settings. Writes
# $SOAK_DIR/samples.csv (time_s,node,rss_kib,fds) and $SOAK_DIR/bench.json, and
# prints the first, peak and last sample of each node.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-30}
nodes=${2:-2}
dir=${SOAK_DIR:-/tmp/chat-soak}
users=${SOAK_USERS:-1000}
rate=${SOAK_RATE:-20000}
interval=${SOAK_INTERVAL:-10}
export CLUSTER_DIR=$dir/cluster
export BASE_PORT=${BASE_PORT:-6101}
export LB_PORT=${LB_PORT:-8100}
export CHAT_DB=${CHAT_DB:-mysql://root@127.0.0.1:3306/chat_soak}
export CHAT_REDIS_PREFIX=${CHAT_REDIS_PREFIX:-soak}
export NODE_ARGS=${NODE_ARGS:---argon2-memory-kib 1024 --argon2-passes 1 --rate 0 --log-level warn}

mkdir -p "$dir"
"$root/autobuild.sh" >/dev/null
"$root/scripts/cluster.sh" stop >/dev/null 2>&1 || true
"$root/scripts/cluster.sh" start "$nodes"
# The soak's own database goes with it, unless SOAK_KEEP_DB=1 (to look at it after).
cleanup() {
    "$root/scripts/cluster.sh" stop
    if [[ -z ${SOAK_KEEP_DB:-} && $CHAT_DB == mysql://root@127.0.0.1:3306/chat_soak ]]; then
        mariadb -uroot -e "DROP DATABASE IF EXISTS chat_soak" || true
    fi
}
trap cleanup EXIT

targets=$(seq -s, -f "127.0.0.1:%g" "$BASE_PORT" $((BASE_PORT + nodes - 1)))
secs=$((minutes * 60))
"$root/bin/chat-bench" one-to-one --targets "$targets" -n "$users" -t 1 \
    --rate "$rate" -d "$secs" --warmup 5 --json "$dir/bench.json" >"$dir/bench.out" 2>"$dir/bench.err" &
bench=$!

echo "time_s,node,rss_kib,fds" >"$dir/samples.csv"
start=$(date +%s)
while kill -0 "$bench" 2>/dev/null; do
    now=$(( $(date +%s) - start ))
    for f in "$CLUSTER_DIR"/node*.pid; do
        pid=$(cat "$f")
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
        echo "$now,$(basename "$f" .pid),$rss,$fds" >>"$dir/samples.csv"
    done
    sleep "$interval"
done
wait "$bench" || true
cat "$dir/bench.out"
echo
echo "node        first(rss KiB,fds)   peak rss KiB   last(rss KiB,fds)"
for n in $(cut -d, -f2 "$dir/samples.csv" | tail -n +2 | sort -u); do
    grep ",$n," "$dir/samples.csv" | awk -F, -v n="$n" '
        NR == 1 { fr = $3; ff = $4 }
        { if ($3 > peak) peak = $3; lr = $3; lf = $4 }
        END { printf "%-10s  %8d,%-6d        %8d       %8d,%-6d\n", n, fr, ff, peak, lr, lf }'
done
