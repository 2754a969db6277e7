#!/usr/bin/env bash
# Makes sure the services the test suite talks to are installed and running:
# MariaDB (127.0.0.1:3306, root, empty password), Redis (127.0.0.1:6379), the
# redis-sentinel binary and the nginx binary (the cluster tests start their own nginx with a private config).
# Idempotent; run as root. A service that cannot be brought up is an error.
set -euo pipefail

log() { printf 'ensure-services: %s\n' "$*"; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # wait_for NAME SECONDS CMD...
    local name=$1 secs=$2
    shift 2
    for _ in $(seq 1 $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "$name did not come up within ${secs}s"
    return 1
}

# --- MariaDB ---
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server
fi
if ! mariadb-admin -uroot ping >/dev/null 2>&1; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for MariaDB 60 mariadb-admin -uroot ping
fi
log "MariaDB up"

# --- Redis ---
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping
fi
log "Redis up"

# --- Redis Sentinel (binary only: cluster.sh and the failover test run their own
# primary, replica and sentinels on private ports) ---
if ! command -v redis-sentinel >/dev/null 2>&1; then
    apt_install redis-sentinel
    # Debian's package may start a system sentinel on 26379; we never use it.
    if command -v service >/dev/null 2>&1; then service redis-sentinel stop >/dev/null 2>&1 || true; fi
fi
log "redis-sentinel present"

# --- nginx (binary only: the cluster script and tests run their own instance) ---
# The stream (TCP) module is a separate package on Debian.
if ! command -v nginx >/dev/null 2>&1 || [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    apt_install nginx-light libnginx-mod-stream
    # Debian's package starts a system nginx on port 80; we never use it.
    if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
fi
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || { log "nginx stream module missing"; exit 1; }
log "nginx $(nginx -v 2>&1 | sed 's/.*\///') with the stream module present"

# --- Chromium and chromedriver (the browser tests drive headless Chromium through
# WebDriver; chat/tests/browser*.rs start their own chromedriver on a free port) ---
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
fi
log "$(chromium --version 2>/dev/null | head -1) and chromedriver present"
