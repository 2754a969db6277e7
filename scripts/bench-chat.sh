#!/usr/bin/env bash
# Runs the chat-bench scenarios of BENCHMARKS.md against release builds and
# prints one line of JSON per run (the full reports are kept in $OUT).
#
#   scripts/bench-chat.sh [SCENARIO...]
#
# Scenarios: o2o-100 o2o-1000 o2o-10000 o2o-open cluster-o2o group-100 group-1000
# login idle-10000 idle-50000 (default: all), and cluster-o2o-sentinel,
# cluster-o2o-wait (cluster-o2o on a Sentinel-managed Redis, without and with WAIT). Environment: OUT (default
# /tmp/chat-bench-results), DURATION (seconds per run, default 10), SERVER_ARGS
# (extra ChatServer options). Servers run on SQLite files in $OUT with cheap
# password hashing (--argon2-memory-kib 64 --argon2-passes 1) so that setting up
# 10,000 users does not dominate, and without the per-connection rate limit
# (--rate 0), since the load generator's senders are deliberately faster than
# people.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/chat-bench-results}
dur=${DURATION:-10}
mkdir -p "$out"
"$root/autobuild.sh" >/dev/null
server="$root/bin/ChatServer"
bench="$root/bin/chat-bench"
common=(--argon2-memory-kib 64 --argon2-passes 1 --rate 0 --log-level warn,ChatServer=info ${SERVER_ARGS:-})
pids=()

start_server() { # start_server NAME PORT [ARGS...]
    local name=$1 port=$2
    shift 2
    rm -f "$out/$name.db"*
    "$server" 0.0.0.0 "$port" --db "$out/$name.db" "${common[@]}" "$@" 2>"$out/$name.log" &
    pids+=($!)
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server $name did not start" >&2
    return 1
}

stop_servers() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap stop_servers EXIT

run() { # run NAME ARGS...
    local name=$1
    shift
    echo "== $name: chat-bench $*" >&2
    "$bench" "$@" --json "$out/$name.json" >"$out/$name.out" 2>"$out/$name.err"
    tail -n 1 "$out/$name.out"
}

cluster_o2o() { # cluster_o2o NAME REDIS_URL [NODE_ARGS...]: two nodes, N = 1,000 across them
    local name=$1 redis=$2 dir=$out/cluster
    shift 2
    CLUSTER_DIR=$dir BASE_PORT=7101 LB_PORT=7199 CHAT_DB=mysql://root@127.0.0.1:3306/chat_bench \
        CHAT_REDIS=$redis CHAT_REDIS_PREFIX=bench NODE_ARGS="${common[*]} $*" CHAT_BIN=$server \
        "$root/scripts/cluster.sh" start 2 >&2
    run "$name" one-to-one --targets 127.0.0.1:7101,127.0.0.1:7102 -n 1000 -w 4 -t 1 -d "$dur" || true
    CLUSTER_DIR=$dir LB_PORT=7199 "$root/scripts/cluster.sh" stop >&2
    mariadb -uroot -e "DROP DATABASE IF EXISTS chat_bench"
}

scenario() {
    case $1 in
    o2o-100)
        start_server s 7001
        run o2o-100 one-to-one --targets 127.0.0.1:7001 -n 100 -w 16 -t 1 -d "$dur"
        ;;
    o2o-1000)
        start_server s 7001
        run o2o-1000 one-to-one --targets 127.0.0.1:7001 -n 1000 -w 4 -t 1 -d "$dur"
        ;;
    o2o-10000)
        start_server s 7001
        run o2o-10000 one-to-one --targets 127.0.0.1:7001,127.0.0.2:7001 -n 10000 -w 1 -t 1 \
            -d "$dur" --concurrency 1000
        ;;
    o2o-open)
        start_server s 7001
        run o2o-open one-to-one --targets 127.0.0.1:7001 -n 1000 -t 1 -d "$dur" \
            --rate "${RATE:-40000}"
        ;;
    cluster-o2o)
        cluster_o2o cluster-o2o redis://127.0.0.1:6379
        ;;
    cluster-o2o-sentinel | cluster-o2o-wait)
        # The same on a Redis primary + replica + three sentinels of cluster.sh;
        # -wait: each claim and routed frame waits for the replica (WAIT 1).
        local sdir=$out/sentinel url
        url=$(CLUSTER_DIR=$sdir SENTINEL_BASE_PORT=7300 "$root/scripts/cluster.sh" sentinel-start)
        local wait=()
        [ "$1" = cluster-o2o-wait ] && wait=(--redis-wait-replicas 1)
        cluster_o2o "$1" "$url" "${wait[@]}"
        CLUSTER_DIR=$sdir "$root/scripts/cluster.sh" sentinel-stop >&2
        ;;
    group-100)
        start_server s 7001
        run group-100 group --targets 127.0.0.1:7001 --groups 10 --group-size 100 -w 4 -t 1 -d "$dur"
        ;;
    group-1000)
        start_server s 7001
        run group-1000 group --targets 127.0.0.1:7001 --groups 1 --group-size 1000 -w 8 -t 1 -d "$dur"
        ;;
    login)
        start_server s 7001
        run login login --targets 127.0.0.1:7001 -n 200 -t 1 -d "$dur"
        ;;
    idle-10000)
        start_server s 7001
        run idle-10000 idle --targets 127.0.0.1:7001 -n 10000 -t 1 -d 15 --concurrency 1000 \
            --server-pid "${pids[-1]}"
        ;;
    idle-50000)
        # One process may hold at most `ulimit -Hn` descriptors (20,000 here, and
        # not raisable in this sandbox): 50,000 connections are held by three
        # servers, each loaded by its own chat-bench.
        local bp=()
        for i in 1 2 3; do start_server "idle$i" $((7010 + i)); done
        for i in 1 2 3; do
            "$bench" idle --targets "127.0.0.$i:$((7010 + i))" -n 16667 -t 1 -d 20 --warmup 0 \
                --concurrency 1000 --server-pid "${pids[$((${#pids[@]} - 4 + i))]}" \
                --json "$out/idle-50000-$i.json" >"$out/idle-50000-$i.out" 2>"$out/idle-50000-$i.err" &
            bp+=($!)
        done
        for p in "${bp[@]}"; do wait "$p"; done
        for i in 1 2 3; do tail -n 1 "$out/idle-50000-$i.out"; done
        ;;
    *) echo "unknown scenario $1" >&2; return 2 ;;
    esac
    stop_servers
}

all=(o2o-100 o2o-1000 o2o-10000 o2o-open cluster-o2o group-100 group-1000 login idle-10000 idle-50000)
for s in "${@:-${all[@]}}"; do scenario "$s"; done
