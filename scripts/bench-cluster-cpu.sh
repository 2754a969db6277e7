#!/usr/bin/env bash
# Cross-node one-to-one on two local nodes (scripts/cluster.sh, MariaDB + Redis),
# with the CPU each process spent per delivered message: both nodes, Redis and
# chat-bench (utime + stime from /proc/PID/stat over the measured period).
#
#   scripts/bench-cluster-cpu.sh [SECONDS]        (default 6)
#
# Environment: CHAT_BIN (the server, default bin/ChatServer), CHAT_BENCH (the
# load generator, default bin/chat-bench), REDIS_URL (default
# redis://127.0.0.1:6379), NODE_EXTRA (more node options), W (messages in flight
# per user, default 4), THREADS (chat-bench threads, default 1). Uses ports 7101,
# 7102 and 7199, database chat_cpubench and
# key prefix cpubench (both removed after).
# Prints one line: msgs/s, lost, p99, then per process its share of a core and
# its CPU per message (the MariaDB server's too: on a shared server, others'
# queries count); then a line of the Redis commands per message over the
# same period (from INFO commandstats: on a shared Redis, others' calls count too).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dur=${1:-6}
dir=${CLUSTER_DIR:-/tmp/chat-cpubench}
args="--argon2-memory-kib 64 --argon2-passes 1 --rate 0 --log-level warn,ChatServer=info ${NODE_EXTRA:-}"
CLUSTER_DIR=$dir BASE_PORT=7101 LB_PORT=7199 CHAT_DB=mysql://root@127.0.0.1:3306/chat_cpubench \
    CHAT_REDIS=${REDIS_URL:-redis://127.0.0.1:6379} CHAT_REDIS_PREFIX=cpubench NODE_ARGS="$args" \
    CHAT_BIN=${CHAT_BIN:-$root/bin/ChatServer} "$root/scripts/cluster.sh" start 2 >/dev/null
cleanup() {
    CLUSTER_DIR=$dir LB_PORT=7199 "$root/scripts/cluster.sh" stop >/dev/null 2>&1 || true
    mariadb -uroot -e "DROP DATABASE IF EXISTS chat_cpubench" || true
    redis-cli --scan --pattern 'cpubench:*' | xargs -r redis-cli del >/dev/null || true
}
trap cleanup EXIT
p1=$(cat "$dir/node1.pid")
p2=$(cat "$dir/node2.pid")
rp=$(redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" info server | tr -d "\r" | sed -n "s/^process_id://p")
# The MariaDB the nodes use (its pid file), not the first mariadbd pgrep finds: another
# one may run on another port.
mp=$(cat "$(mariadb -uroot -h127.0.0.1 -P3306 -N -e 'SELECT @@pid_file')")
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
"${CHAT_BENCH:-$root/bin/chat-bench}" one-to-one --targets 127.0.0.1:7101,127.0.0.1:7102 -n 1000 -w "${W:-4}" -t "${THREADS:-1}" \
    -d "$dur" --json "$dir/out.json" >"$dir/bench.out" 2>&1 &
bp=$!
sleep 4 # setup (~1-2 s) and the 2 s warm-up
stats() { redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" info commandstats | tr -d '\r'; }
stats >"$dir/cmd0"
a=("$(cpu "$p1")" "$(cpu "$p2")" "$(cpu "$rp")" "$(cpu "$mp")" "$(cpu "$bp")")
t0=$(date +%s.%N)
sleep $((dur - 1))
b=("$(cpu "$p1")" "$(cpu "$p2")" "$(cpu "$rp")" "$(cpu "$mp")" "$(cpu "$bp")")
t1=$(date +%s.%N)
stats >"$dir/cmd1"
wait "$bp" || true
python3 - "$dir/out.json" "$t0" "$t1" "$(getconf CLK_TCK)" "${a[@]}" "${b[@]}" "$dir" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
t0, t1, tck = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
a, b = list(map(float, sys.argv[5:10])), list(map(float, sys.argv[10:15]))
rate, el = d["delivered_per_sec"], t1 - t0
out = [f"{rate:.0f} msgs/s lost={d['lost']} p99={d['latency']['p99_us'] / 1000:.0f}ms"]
for i, name in enumerate(["node1", "node2", "redis", "mariadb", "chat-bench"]):
    c = (b[i] - a[i]) / tck
    out.append(f"{name} {c / el * 100:.0f}% {c / el / rate * 1e6:.1f}us/msg")
print(" | ".join(out))
def calls(path):
    got = {}
    for line in open(path):
        m = re.match(r"cmdstat_(\w+):calls=(\d+)", line)
        if m:
            got[m.group(1)] = int(m.group(2))
    return got
c0, c1 = calls(sys.argv[15] + "/cmd0"), calls(sys.argv[15] + "/cmd1")
per = {k: (v - c0.get(k, 0)) / (rate * el) for k, v in c1.items()}
top = sorted(((v, k) for k, v in per.items() if v >= 0.0005), reverse=True)
print("redis calls/msg: " + " ".join(f"{k}={v:.3f}" for v, k in top)
      + f" | total={sum(per.values()):.3f}")
PY
