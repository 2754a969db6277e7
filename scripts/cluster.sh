#!/usr/bin/env bash
# A local ChatServer cluster in one command: N nodes on MySQL (MariaDB) and Redis
# behind a private nginx TCP load balancer.
#
#   scripts/cluster.sh start [N]   start N nodes (default 2) and nginx
#   scripts/cluster.sh stop        stop them (SIGTERM: a clean shutdown)
#   scripts/cluster.sh status      show what runs
#   scripts/cluster.sh --help      this text
#
# `start` refuses to begin when a node port or the nginx port is already taken, and
# fails (stopping what it started) when a node dies or does not listen in time.
#
# Settings (environment):
#   CLUSTER_DIR   state, logs and nginx config      (default /tmp/chat-cluster)
#   CHAT_DB       database URL                       (default mysql://root@127.0.0.1:3306/chat)
#   CHAT_REDIS    Redis URL                          (default redis://127.0.0.1:6379)
#   CHAT_REDIS_PREFIX  key/channel prefix            (default chat)
#   BASE_PORT     first node port, then +1, +2, ...  (default 6001)
#   LB_PORT       nginx listen port on 127.0.0.1     (default 8000)
#   CHAT_BIN      the ChatServer binary              (default bin/ChatServer, built by autobuild.sh)
#   ADMIN_BASE_PORT  if set, node i serves /healthz, /readyz, /metrics (and the
#                 admin routes, given CHAT_ADMIN_TOKEN) on 127.0.0.1:ADMIN_BASE_PORT+i-1
#   NODE_ARGS     extra ChatServer options
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CLUSTER_DIR:-/tmp/chat-cluster}
db=${CHAT_DB:-mysql://root@127.0.0.1:3306/chat}
redis=${CHAT_REDIS:-redis://127.0.0.1:6379}
prefix=${CHAT_REDIS_PREFIX:-chat}
base_port=${BASE_PORT:-6001}
lb_port=${LB_PORT:-8000}
bin=${CHAT_BIN:-$root/bin/ChatServer}
admin_base=${ADMIN_BASE_PORT:-}

log() { printf 'cluster: %s\n' "$*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port PORT SECONDS
    for _ in $(seq 1 $(($2 * 10))); do
        if port_open "$1"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# wait_node I PORT PID: until node I logs that it listens; fails at once if it died.
wait_node() {
    local i=$1 port=$2 pid=$3
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "node $i (port $port) died at start: $(tail -n 1 "$dir/node$i.log" 2>/dev/null)"
            return 1
        fi
        if grep -q "listening on" "$dir/node$i.log" 2>/dev/null && port_open "$port"; then
            return 0
        fi
        sleep 0.1
    done
    log "node $i (port $port) did not start within 30 s; see $dir/node$i.log"
    return 1
}

# Every port the cluster would listen on must be free before anything starts:
# otherwise nginx would send clients to whatever else listens there.
check_ports() {
    local n=$1 taken=0 p
    local ports=("$lb_port")
    for i in $(seq 1 "$n"); do
        ports+=("$((base_port + i - 1))")
        [ -z "$admin_base" ] || ports+=("$((admin_base + i - 1))")
    done
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            log "port $p is taken by another process; free it or choose BASE_PORT / LB_PORT / ADMIN_BASE_PORT"
            taken=1
        fi
    done
    return "$taken"
}

ensure_nginx() {
    if ! command -v nginx >/dev/null 2>&1 || [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
        log "installing nginx with the stream module"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-stream >/dev/null
        service nginx stop >/dev/null 2>&1 || true
    fi
}

start() {
    local n=${1:-2}
    if [ -f "$dir/nginx.pid" ] || ls "$dir"/node*.pid >/dev/null 2>&1; then
        log "already running in $dir (stop it first)"
        exit 1
    fi
    check_ports "$n" || exit 1
    ensure_nginx
    if [ ! -x "$bin" ]; then
        log "building (no $bin)"
        "$root/autobuild.sh" >/dev/null
    fi
    mkdir -p "$dir"
    local upstreams=""
    for i in $(seq 1 "$n"); do
        local port=$((base_port + i - 1))
        local admin=()
        [ -z "$admin_base" ] || admin=(--admin-addr "127.0.0.1:$((admin_base + i - 1))")
        # shellcheck disable=SC2086
        nohup "$bin" 127.0.0.1 "$port" --db "$db" --redis "$redis" \
            --redis-prefix "$prefix" --node-id "node$i-$port" "${admin[@]}" ${NODE_ARGS:-} \
            >"$dir/node$i.log" 2>&1 &
        echo $! >"$dir/node$i.pid"
        upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
    done
    for i in $(seq 1 "$n"); do
        local port=$((base_port + i - 1))
        wait_node "$i" "$port" "$(cat "$dir/node$i.pid")" || { stop; exit 1; }
    done
    sed -e "s|@PREFIX@|$dir|g" -e "s|@LISTEN@|127.0.0.1:$lb_port|g" \
        "$root/deploy/nginx-stream.conf.in" | awk -v ups="$upstreams" '{ if ($0 == "@UPSTREAMS@") printf "%s", ups; else print }' \
        >"$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
    wait_port "$lb_port" 10 || { log "nginx did not start; see $dir/nginx-error.log"; stop; exit 1; }
    log "$n node(s) on ports $base_port..$((base_port + n - 1)); nginx on 127.0.0.1:$lb_port; logs in $dir"
}

stop() {
    if [ -f "$dir/nginx.pid" ]; then
        nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log" -s quit 2>/dev/null \
            || kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -f "$dir/nginx.pid" ] || break; sleep 0.1; done
        rm -f "$dir/nginx.pid"
    fi
    for f in "$dir"/node*.pid; do
        [ -f "$f" ] || continue
        kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    for f in "$dir"/node*.pid; do
        [ -f "$f" ] || continue
        local pid
        pid=$(cat "$f")
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    log "stopped"
}

status() {
    for f in "$dir"/node*.pid; do
        [ -f "$f" ] || continue
        if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .pid): dead"; fi
    done
    if [ -f "$dir/nginx.pid" ] && kill -0 "$(cat "$dir/nginx.pid")" 2>/dev/null; then
        echo "nginx: running on 127.0.0.1:$lb_port"
    else
        echo "nginx: not running"
    fi
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    stop) stop ;;
    status) status ;;
    -h | --help | help) usage ;;
    *) echo "usage: $0 start [N] | stop | status | --help" >&2; exit 2 ;;
esac
