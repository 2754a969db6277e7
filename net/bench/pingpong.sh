#!/usr/bin/env bash
# Runs muduo's pingpong throughput matrix against net's pingpong examples:
# block 4096 and 16384 bytes x 1/10/100/1000 connections x 1 and 2 threads
# (server and client each get that many threads). Each cell is run REPEAT
# times for DURATION seconds and the median is reported: a shared 2-core VM is
# noisy, single runs of the same cell differ by up to 2x.
#
#   net/bench/pingpong.sh                 # 3 s x 3 repeats per cell, 16 cells
#   DURATION=5 REPEAT=1 PORT=40000 net/bench/pingpong.sh
#   BLOCKS=4096 CONNS="1 10" THREADS=1 net/bench/pingpong.sh   # a sub-matrix
#
# Builds the examples in release first (honours CARGO_TARGET_DIR). Prints one
# line per run as it goes, then a Markdown table of MiB/s.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
DURATION="${DURATION:-3}"
REPEAT="${REPEAT:-3}"
PORT="${PORT:-45678}"
read -ra BLOCKS <<<"${BLOCKS:-4096 16384}"
read -ra CONNS <<<"${CONNS:-1 10 100 1000}"
read -ra THREADS <<<"${THREADS:-1 2}"

cd "$ROOT"
cargo build --release -p net --examples >&2
BIN="$TARGET/release/examples"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

LOG="$(mktemp)"
CLIENT_LOG="$(mktemp)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap 'cleanup; rm -f "$LOG" "$CLIENT_LOG"' EXIT

# One run: prints the client's MiB/s, or "failed".
run_once() {
    local threads=$1 block=$2 conns=$3 out mib
    # Empty the log first: the server truncates it only once it has started, and
    # the previous server's "listening" must not be mistaken for this one's.
    : >"$LOG"
    "$BIN/pingpong_server" 127.0.0.1 "$PORT" "$threads" 2>"$LOG" &
    server_pid=$!
    for _ in $(seq 50); do
        grep -q listening "$LOG" && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q listening "$LOG" || ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$LOG" >&2 # most likely the port is taken: try PORT=...
        local rc=0
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || rc=$?
        echo "pingpong_server exited with status $rc" >&2
        server_pid=""
        echo "failed"
        return
    fi
    out="$("$BIN/pingpong_client" 127.0.0.1 "$PORT" "$threads" "$block" "$conns" "$DURATION" 2>"$CLIENT_LOG" || true)"
    cleanup
    server_pid=""
    mib="$(awk '/MiB\/s throughput/ {print $1}' <<<"$out")"
    if [[ -z "$mib" ]]; then
        cat "$CLIENT_LOG" >&2
    fi
    echo "${mib:-failed}"
}

# The median of the runs that did not fail ("failed" when all did).
median() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
        awk '{v[NR] = $1} END {print NR ? v[int((NR + 1) / 2)] : "failed"}'
}

declare -A result
for threads in "${THREADS[@]}"; do
    for block in "${BLOCKS[@]}"; do
        for conns in "${CONNS[@]}"; do
            runs=()
            for _ in $(seq "$REPEAT"); do
                runs+=("$(run_once "$threads" "$block" "$conns")")
                sleep 0.3
            done
            result["$threads,$block,$conns"]="$(median "${runs[@]}")"
            echo "threads=$threads block=$block connections=$conns: ${runs[*]} MiB/s" >&2
        done
    done
done

echo
header="| threads | block |"
rule="|--------:|------:|"
for conns in "${CONNS[@]}"; do
    header="$header $conns conn |"
    rule="$rule------:|"
done
echo "$header"
echo "$rule"
for threads in "${THREADS[@]}"; do
    for block in "${BLOCKS[@]}"; do
        row="| $threads | $block"
        for conns in "${CONNS[@]}"; do
            row="$row | ${result["$threads,$block,$conns"]}"
        done
        echo "$row |"
    done
done
