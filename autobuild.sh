#!/usr/bin/env bash
# Builds the release binaries and copies them into bin/:
#   bin/ChatServer, bin/ChatClient (and bin/chat-bench once it exists).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --workspace --bins
mkdir -p bin
for exe in ChatServer ChatClient chat-bench; do
    if [ -x "target/release/$exe" ]; then
        cp -f "target/release/$exe" "bin/$exe"
        echo "bin/$exe"
    fi
done
