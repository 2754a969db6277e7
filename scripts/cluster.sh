#!/usr/bin/env bash
# A local ChatServer cluster in one command: N nodes on MySQL (MariaDB) and Redis
# behind a private nginx: a TCP load balancer for the terminal clients and an
# HTTP/WebSocket proxy for the web client (each node also listens with --ws-addr).
#
#   scripts/cluster.sh start [N]   start N nodes (default 2) and nginx
#   scripts/cluster.sh stop        stop them (SIGTERM: a clean shutdown)
#   scripts/cluster.sh status      show what runs
#   scripts/cluster.sh sentinel-start   a Redis primary, one replica and three
#                                  sentinels under $CLUSTER_DIR/sentinel; prints the
#                                  redis+sentinel:// URL to give the nodes as CHAT_REDIS
#   scripts/cluster.sh sentinel-stop    stop them (SIGKILL: they keep nothing)
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
#   WS_BASE_PORT  first node's --ws-addr port, then +1, ... (default 6101)
#   WEB_PORT      nginx's web client / WebSocket port on 127.0.0.1 (default 8080):
#                 open http://127.0.0.1:WEB_PORT/ in a browser
#   CHAT_BIN      the ChatServer binary              (default bin/ChatServer, built by autobuild.sh)
#   ADMIN_BASE_PORT  if set, node i serves /healthz, /readyz, /metrics (and the
#                 admin routes, given CHAT_ADMIN_TOKEN) on 127.0.0.1:ADMIN_BASE_PORT+i-1
#   NODE_ARGS     extra ChatServer options
#   SENTINEL_BASE_PORT  primary port, then replica +1, sentinels +2..+4 (default 26400)
#   SENTINEL_MASTER     the master's name in the sentinels (default chat)
#   SENTINEL_DOWN_AFTER_MS  silence after which a sentinel calls the primary down (default 2000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CLUSTER_DIR:-/tmp/chat-cluster}
db=${CHAT_DB:-mysql://root@127.0.0.1:3306/chat}
redis=${CHAT_REDIS:-redis://127.0.0.1:6379}
prefix=${CHAT_REDIS_PREFIX:-chat}
base_port=${BASE_PORT:-6001}
lb_port=${LB_PORT:-8000}
ws_base=${WS_BASE_PORT:-6101}
web_port=${WEB_PORT:-8080}
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
    local ports=("$lb_port" "$web_port")
    for i in $(seq 1 "$n"); do
        ports+=("$((base_port + i - 1))" "$((ws_base + i - 1))")
        [ -z "$admin_base" ] || ports+=("$((admin_base + i - 1))")
    done
    for p in "${ports[@]}"; do
        if port_open "$p"; then
            log "port $p is taken by another process; free it or choose BASE_PORT / LB_PORT / WS_BASE_PORT / WEB_PORT / ADMIN_BASE_PORT"
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
    local upstreams="" ws_upstreams=""
    for i in $(seq 1 "$n"); do
        local port=$((base_port + i - 1))
        local admin=()
        [ -z "$admin_base" ] || admin=(--admin-addr "127.0.0.1:$((admin_base + i - 1))")
        # shellcheck disable=SC2086
        local ws_port=$((ws_base + i - 1))
        nohup "$bin" 127.0.0.1 "$port" --db "$db" --redis "$redis" \
            --redis-prefix "$prefix" --node-id "node$i-$port" --ws-addr "127.0.0.1:$ws_port" \
            "${admin[@]}" ${NODE_ARGS:-} >"$dir/node$i.log" 2>&1 &
        echo $! >"$dir/node$i.pid"
        upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
        ws_upstreams+="        server 127.0.0.1:$ws_port max_fails=1 fail_timeout=2s;"$'\n'
    done
    for i in $(seq 1 "$n"); do
        local port=$((base_port + i - 1))
        wait_node "$i" "$port" "$(cat "$dir/node$i.pid")" || { stop; exit 1; }
    done
    sed -e "s|@PREFIX@|$dir|g" -e "s|@LISTEN@|127.0.0.1:$lb_port|g" \
        "$root/deploy/nginx-stream.conf.in" | awk -v ups="$upstreams" '{ if ($0 == "@UPSTREAMS@") printf "%s", ups; else print }' \
        >"$dir/nginx.conf"
    mkdir -p "$dir/tmp" "$dir/http.d"
    sed -e "s|@PREFIX@|$dir|g" -e "s|@WEB_LISTEN@|127.0.0.1:$web_port|g" \
        "$root/deploy/nginx-web.conf.in" | awk -v ups="$ws_upstreams" '{ if ($0 == "@WS_UPSTREAMS@") printf "%s", ups; else print }' \
        >"$dir/http.d/web.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
    wait_port "$lb_port" 10 || { log "nginx did not start; see $dir/nginx-error.log"; stop; exit 1; }
    wait_port "$web_port" 10 || { log "nginx's web port did not open; see $dir/nginx-error.log"; stop; exit 1; }
    log "$n node(s) on ports $base_port..$((base_port + n - 1)) (WebSocket $ws_base..$((ws_base + n - 1))); nginx on 127.0.0.1:$lb_port (TCP) and http://127.0.0.1:$web_port/ (web client); logs in $dir"
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
        echo "nginx: running on 127.0.0.1:$lb_port (TCP) and http://127.0.0.1:$web_port/ (web)"
    else
        echo "nginx: not running"
    fi
}

# --- Redis under Sentinel: primary, replica, three sentinels, all on 127.0.0.1 ---

sentinel_ports() { # sets s_primary s_replica s_sentinels
    local b=${SENTINEL_BASE_PORT:-26400}
    s_primary=$b
    s_replica=$((b + 1))
    s_sentinels="$((b + 2)) $((b + 3)) $((b + 4))"
}

sentinel_start() {
    local sdir="$dir/sentinel" name=${SENTINEL_MASTER:-chat} down=${SENTINEL_DOWN_AFTER_MS:-2000}
    sentinel_ports
    if ls "$sdir"/*.pid >/dev/null 2>&1; then
        log "sentinel set already running in $sdir (sentinel-stop it first)"
        exit 1
    fi
    command -v redis-sentinel >/dev/null 2>&1 \
        || { log "redis-sentinel missing: run scripts/ensure-services.sh"; exit 1; }
    mkdir -p "$sdir"
    # No persistence: a killed Redis comes back empty, which is what failover is for.
    # Diskless sync without delay: the replica is in sync within moments.
    local common=(--bind 127.0.0.1 --save "" --appendonly no --daemonize no
                  --repl-diskless-sync yes --repl-diskless-sync-delay 0)
    nohup redis-server --port "$s_primary" --dir "$sdir" "${common[@]}" \
        >"$sdir/primary.log" 2>&1 &
    echo $! >"$sdir/primary.pid"
    nohup redis-server --port "$s_replica" --dir "$sdir" --replicaof 127.0.0.1 "$s_primary" \
        "${common[@]}" >"$sdir/replica.log" 2>&1 &
    echo $! >"$sdir/replica.pid"
    local i=0 p
    for p in $s_sentinels; do
        i=$((i + 1))
        # A sentinel rewrites its config file: each gets its own.
        cat >"$sdir/sentinel$i.conf" <<EOF
port $p
bind 127.0.0.1
daemonize no
dir $sdir
sentinel monitor $name 127.0.0.1 $s_primary 2
sentinel down-after-milliseconds $name $down
sentinel failover-timeout $name 10000
sentinel parallel-syncs $name 1
EOF
        nohup redis-sentinel "$sdir/sentinel$i.conf" >"$sdir/sentinel$i.log" 2>&1 &
        echo $! >"$sdir/sentinel$i.pid"
    done
    # Ready when the replica is in sync and every sentinel knows the replica and
    # the two other sentinels (a failover needs them).
    local ok=0 m
    for _ in $(seq 1 300); do
        ok=1
        redis-cli -p "$s_replica" info replication 2>/dev/null | grep -q 'master_link_status:up' || ok=0
        for p in $s_sentinels; do
            m=$(redis-cli -p "$p" sentinel master "$name" 2>/dev/null | tr -d '\r' | paste - - || true)
            { grep -qx $'num-slaves\t1' <<<"$m" && grep -qx $'num-other-sentinels\t2' <<<"$m"; } || ok=0
        done
        [ "$ok" = 1 ] && break
        sleep 0.1
    done
    if [ "$ok" != 1 ]; then
        log "sentinel set did not come up within 30 s; see $sdir/*.log"
        sentinel_stop
        exit 1
    fi
    local url="redis+sentinel://" sep=""
    for p in $s_sentinels; do url+="${sep}127.0.0.1:$p"; sep=","; done
    log "Redis primary :$s_primary, replica :$s_replica, sentinels :${s_sentinels// /,:} in $sdir"
    echo "$url/$name"
}

sentinel_stop() {
    local f sdir="$dir/sentinel"
    for f in "$sdir"/*.pid; do
        [ -f "$f" ] || continue
        kill -KILL "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    log "sentinel set stopped"
}

case "${1:-}" in
    start) start "${2:-2}" ;;
    stop) stop ;;
    status) status ;;
    sentinel-start) sentinel_start ;;
    sentinel-stop) sentinel_stop ;;
    -h | --help | help) usage ;;
    *) echo "usage: $0 start [N] | stop | status | sentinel-start | sentinel-stop | --help" >&2; exit 2 ;;
esac
