#!/usr/bin/env bash
# User-space instructions per one-to-one message in the server's IO loop, counted by
# valgrind's callgrind: repeatable whatever else the machine does (CPU time per
# message is not, on a shared VM). The server runs the issue #18 command (SQLite,
# history on) under callgrind, one thread per file; chat-bench loads it (N = 1,000,
# W = 1); the busiest thread's instructions (the IO loop: one, --io-threads 1) are
# divided by the chats it delivered (/metrics). The 1,000
# logins of the setup are counted in; they are a few percent.
#
#   scripts/bench-callgrind.sh SERVER [SECONDS]      (default 10)
#
# SERVER: a ChatServer binary; CHAT_BENCH (default target/release/chat-bench).
# Prints: instructions, chats, instructions per chat, and the same for each thread
# above 1% of the total. Uses ports 7291 and 7292 and a temporary directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:?usage: bench-callgrind.sh SERVER [SECONDS]}
dur=${2:-10}
bench=${CHAT_BENCH:-$root/target/release/chat-bench}
dir=$(mktemp -d)
sp=
trap 'if [ -n "$sp" ]; then kill "$sp" 2>/dev/null || true; fi; rm -rf "$dir"' EXIT
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/cg.%p" \
    "$bin" 127.0.0.1 7291 --admin-addr 127.0.0.1:7292 --db "$dir/chat.db" --io-threads 1 \
    --argon2-memory-kib 64 --argon2-passes 1 --rate 0 --log-level warn >"$dir/server.log" 2>&1 &
sp=$!
for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/7291) 2>/dev/null; then break; fi
    sleep 0.1
done
"$bench" one-to-one -n 1000 -w 1 -t 1 -d "$dur" --targets 127.0.0.1:7291 >"$dir/bench.out" 2>&1
chats=$(curl -s http://127.0.0.1:7292/metrics | sed -n 's/^chat_chats_total{outcome="local"} //p')
if [ -z "$chats" ]; then
    echo "bench-callgrind: no chat_chats_total in /metrics; see $dir/server.log" >&2
    exit 1
fi
kill -INT "$sp"
wait "$sp" || true
python3 - "$dir" "$chats" <<'PY'
import glob, re, sys
chats = float(sys.argv[2])
totals = []
for f in glob.glob(sys.argv[1] + "/cg.*-*"):
    for line in open(f):
        m = re.match(r"(?:totals|summary): (\d+)", line)
        if m:
            totals.append(int(m.group(1)))
            break
totals.sort(reverse=True)
every = sum(totals)
print(f"chats {chats:.0f}; IO loop {totals[0]:,} instructions, {totals[0] / chats:,.0f} per chat; "
      f"all threads {every / chats:,.0f} per chat")
print("threads above 1%: " + ", ".join(f"{t / chats:,.0f}" for t in totals if t > every / 100))
PY
