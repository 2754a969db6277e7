#!/usr/bin/env bash
# The issue #18 one-node command: server CPU per one-to-one message at N = 1,000,
# W = 1, measured by chat-bench from the server's /proc times (BENCHMARKS.md).
#
#   scripts/bench-one-node.sh KIND BIN [SERVER_ARGS...]
#
# KIND: ours (BIN is a ChatServer; SQLite file in a temporary directory, cheap
# password hashing, no rate limit, history on unless SERVER_ARGS say --no-history),
# original (BIN is the original C++ ChatServer; chat-bench runs --legacy; its MySQL
# and Redis must be up), floor (BIN is net's floor_forwarder example: one read and
# one send per message, what the kernel alone costs). Environment: PIN=1 runs the
# server on CPU 0 and chat-bench on CPU 1; PORT (default 7281); DURATION (default 8);
# CHAT_BENCH (default target/release/chat-bench). Prints one line: KIND, µs per
# message, µs sys, delivered, lost.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:?usage: bench-one-node.sh ours|original|floor BIN [SERVER_ARGS...]}
bin=${2:?usage: bench-one-node.sh ours|original|floor BIN [SERVER_ARGS...]}
shift 2
port=${PORT:-7281}
dur=${DURATION:-8}
bench=${CHAT_BENCH:-$root/target/release/chat-bench}
srv_pin=()
bench_pin=()
if [ "${PIN:-0}" = 1 ]; then
    srv_pin=(taskset -c 0)
    bench_pin=(taskset -c 1)
fi
dir=$(mktemp -d)
sp=
trap 'if [ -n "$sp" ]; then kill "$sp" 2>/dev/null || true; wait "$sp" 2>/dev/null || true; fi; rm -rf "$dir"' EXIT
legacy=()
case $kind in
ours)
    "${srv_pin[@]}" "$bin" 127.0.0.1 "$port" --db "$dir/o2o.db" --argon2-memory-kib 64 \
        --argon2-passes 1 --rate 0 --log-level warn "$@" >"$dir/server.log" 2>&1 &
    ;;
original)
    legacy=(--legacy)
    "${srv_pin[@]}" "$bin" 127.0.0.1 "$port" "$@" >"$dir/server.log" 2>&1 &
    ;;
floor)
    "${srv_pin[@]}" "$bin" "127.0.0.1:$port" "$@" >"$dir/server.log" 2>&1 &
    ;;
*)
    echo "bench-one-node: unknown kind $kind" >&2
    exit 2
    ;;
esac
sp=$!
for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done
"${bench_pin[@]}" "$bench" one-to-one -n 1000 -w 1 -t 1 -d "$dur" --targets "127.0.0.1:$port" \
    --server-pid "$sp" "${legacy[@]}" --json "$dir/report.json" >"$dir/bench.out" 2>&1 || {
    echo "bench-one-node: chat-bench failed:" >&2
    tail -n 5 "$dir/bench.out" >&2
    tail -n 5 "$dir/server.log" >&2
    exit 1
}
python3 - "$kind" "$dir/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]}: {r['server_cpu_us_per_unit']:.2f} us/msg "
      f"({r['server_cpu_sys_us_per_unit']:.2f} sys), delivered {r.get('delivered')}, "
      f"lost {r.get('lost')}")
PY
