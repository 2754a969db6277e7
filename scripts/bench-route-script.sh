#!/usr/bin/env bash
# Redis's CPU per frame for the bus's route script (chat/src/bus/scripts.rs, ROUTE)
# alone, on a private redis-server: CALLS calls of FRAMES one-to-one frames each
# (about 230 bytes, 1,000 users online on one node that reads batch entries),
# piped with redis-cli --pipe; prints utime + stime of the server per frame.
#
#   scripts/bench-route-script.sh [REV]    the script as of git REV (default: the
#                                          working tree)
#
# Environment: CALLS (default 600), FRAMES (default 170), PORT (default 7398).
# The script's arguments changed at the `b1` stream format: for a REV before it,
# the format marker argument is left out (detected from the script text).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
calls=${CALLS:-600}
frames=${FRAMES:-170}
port=${PORT:-7398}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${1:-}" ]; then
    git -C "$root" show "$1:chat/src/bus/scripts.rs" >"$work/scripts.rs"
else
    cp "$root/chat/src/bus/scripts.rs" "$work/scripts.rs"
fi
python3 - "$work" "$calls" "$frames" <<'PY'
import sys
work, calls, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src = open(work + "/scripts.rs").read()
start = src.index('pub const ROUTE: &str = r"') + len('pub const ROUTE: &str = r"')
script = src[start:src.index('";', start)]
marker = "ARGV[3]" in script  # the `b1` format marker
out = open(work + "/cmds.resp", "wb")
def cmd(*args):
    a = [x if isinstance(x, bytes) else str(x).encode() for x in args]
    out.write(b"*%d\r\n" % len(a))
    for x in a:
        out.write(b"$%d\r\n%s\r\n" % (len(x), x))
cmd("SET", "bb:node:nb", "b1")
cmd("HSET", "bb:online", *[v for u in range(1, 1001) for v in (u, "nb")])
frame = ('{"id":%d,"msg":"1 2 3 %s","msgid":6,"name":"b1234567_1",'
         '"time":"2026-01-01 00:00:00","to":%d,"toid":%d}')
k = 0
for c in range(calls):
    args = ["EVAL", script, 1, "bb:online", "bb:node:", "bb:q:"] + (["b1"] if marker else [])
    for _ in range(frames):
        k += 1
        to = (k * 7) % 1000 + 1
        args += [1, to, frame % (k % 1000 + 1, "x" * 40, to, to)]
    cmd(*args)
    if c % 50 == 49:
        cmd("DEL", "bb:q:nb")
PY
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    >/dev/null 2>&1 &
rp=$!
for _ in $(seq 50); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then break; fi
    sleep 0.1
done
cpu() { awk '{print $14 + $15}' "/proc/$rp/stat"; }
a=$(cpu)
redis-cli -p "$port" --pipe <"$work/cmds.resp" >"$work/pipe.out" 2>&1
b=$(cpu)
kill "$rp"
wait "$rp" 2>/dev/null || true
grep -q "errors: 0" "$work/pipe.out" || { cat "$work/pipe.out" >&2; exit 1; }
python3 -c "print('route script: %.2f us of Redis CPU per frame (%d calls x %d frames)' \
    % (($b - $a) * 1e6 / $(getconf CLK_TCK) / ($calls * $frames), $calls, $frames))"
