#!/usr/bin/env bash
# Mutation testing with cargo-mutants over the modules that guard correctness:
# every mutant (a changed operator, a function that returns a default, ...) that
# the tests do not catch is a behaviour nobody checks. Not part of CI (hours on
# two cores); run it before resolving an issue that touches these modules and
# triage its survivors in docs/mutants.md.
#
#   nice -n 19 scripts/mutants.sh [MODULE...]     default: all, by value
#   modules: protocol codec router gateway service store bus
#
# Feasible on two cores because:
#   - it runs in a scratch copy of this tree made with rsync -a (mtimes kept)
#     that keeps its own target/ from run to run (never this tree's, whose
#     build settings differ), so a mutant costs an incremental build; the
#     mutants are applied there in place, never in this tree;
#   - the mutants' builds carry no debug info (CARGO_PROFILE_DEV_DEBUG=0) and
#     link with mold when it is installed (apt-get install mold): a test binary
#     of this workspace is linked once per mutant and per target, and linking
#     its debug info was most of a mutant's build (docs/mutants.md, "Cost");
#   - two passes per module: (1) quick: each mutant against the module's own unit
#     tests only (cargo test --lib, one small binary, filtered by module path);
#     (2) full: only the survivors of pass 1 (cargo mutants --iterate), against
#     the integration tests that exercise the module over real sockets.
# What survives pass 2 is in mutants-out/MODULE/mutants.out/missed.txt.
#
# One mutant at a time (--in-place cannot run jobs in parallel): on a shared
# machine run the script under nice -n 19.
#
# Environment: MUTANTS_RE (only the mutants whose name
# matches this regex, e.g. 'Role::|is_fatal' to re-check triaged survivors),
# MUTANTS_TESTS (replaces the pass's test selection, in the form of the
# tables below, e.g. '--test admin :: group_chat' for the mutants of a counter
# only admin.rs reads), MUTANTS_TIMEOUT
# (seconds a mutant's tests may run, default 300: a mutant that makes a test hang
# counts as caught once it times out), MUTANTS_PASS (quick, full or both; default
# both), MUTANTS_SCRATCH (the scratch copy, default /tmp/chat-mutants-tree).
# Needs MariaDB and Redis like the test suite (scripts/ensure-services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

timeout=${MUTANTS_TIMEOUT:-300}
only=${MUTANTS_RE:-}
pass=${MUTANTS_PASS:-both}
tests=${MUTANTS_TESTS:-}
scratch=${MUTANTS_SCRATCH:-/tmp/chat-mutants-tree}
out=$PWD/mutants-out

if ! command -v cargo-mutants >/dev/null 2>&1; then
    cargo install --locked cargo-mutants
fi

# The product sources of a module directory: every .rs file but the tests.
sources() {
    find "$1" -name '*.rs' ! -name tests.rs ! -path '*/tests/*' | sort
}

# Files of each module, and the tests of its two passes: cargo test target
# selection (each word one --cargo-arg, so the build compiles only those targets),
# then "::" and a test-name filter for the test binaries (may be empty).
files_of() {
    case $1 in
    protocol) sources chat/src/protocol ;;
    codec) sources chat/src/codec ;;
    router) echo chat/src/router.rs chat/src/hub.rs chat/src/outflow.rs ;;
    gateway) echo chat/src/gateway.rs chat/src/session.rs ;;
    service) sources chat/src/service ;;
    store) sources chat/src/store ;;
    bus) sources chat/src/bus ;;
    *) echo "unknown module $1" >&2 && return 1 ;;
    esac
}
quick_tests() {
    case $1 in
    protocol) echo "--lib :: protocol::" ;;
    codec) echo "--lib :: codec::" ;;
    router) echo "--test identity --test hub --test router ::" ;;
    gateway | service) echo "--test identity ::" ;;
    store) echo "--lib :: store::" ;;
    bus) echo "--lib :: bus::" ;;
    esac
}
full_tests() {
    case $1 in
    protocol | codec) echo "--test fuzz_props --test framing --test messages ::" ;;
    router) echo "--test hub --test router --test identity --test delivery --test messages \
        --test framing --test offline_bounds --test confirm --test outflow_bound --test outflow_order \
        --test acks ::" ;;
    gateway | service) echo "--test delivery --test messages --test framing ::" ;;
    store) echo "--test delivery --test identity --test messages ::" ;;
    bus) echo "--test bus --test cluster --test outages ::" ;;
    esac
}

run() { # run MODULE quick|full
    local module=$1 which=$2 args=() sel filter w
    for f in $(files_of "$module"); do args+=(--file "$f"); done
    if [ -n "$tests" ]; then
        sel=$tests
    elif [ "$which" = quick ]; then
        sel=$(quick_tests "$module")
    else
        sel=$(full_tests "$module")
    fi
    filter=${sel#*::}
    local pre=()
    for w in ${sel%%::*}; do
        args+=(--cargo-arg="$w")
        pre+=("$w")
    done
    # A scratch tree's first build (every dependency) can outlast the build
    # timeout at nice 19 on a loaded machine: build the selection once first, so
    # that a mutant's build is the incremental one of `chat`.
    (cd "$scratch" && cargo test --package chat "${pre[@]}" --no-run >/dev/null 2>&1) || true
    if [ "$which" = full ]; then args+=(--iterate); fi
    if [ -n "$only" ]; then args+=(--re "$only"); fi
    echo "mutants: $module, $which pass: cargo test ${sel%%::*} --$filter" >&2
    # --baseline skip: the suite is known to pass (CI), and the fixed timeouts
    # replace the measured ones. Exit status 2 (mutants missed) or 3 (timeouts)
    # is a result, not a failure of the script.
    # shellcheck disable=SC2086 # $filter is a list of test-name filters
    (cd "$scratch" && cargo mutants --in-place --package chat "${args[@]}" --baseline=skip \
        --timeout "$timeout" --build-timeout 900 --no-shuffle \
        --output "$out/$module" -- -- $filter) || {
        rc=$?
        [ "$rc" = 2 ] || [ "$rc" = 3 ] || return "$rc"
    }
}

# Cheaper builds (docs/mutants.md, "Cost"). They change every crate's
# fingerprint, which is why the scratch tree keeps a target/ of its own.
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-0}
if command -v mold >/dev/null 2>&1; then
    export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"
fi

bash scripts/ensure-services.sh >/dev/null
mkdir -p "$scratch"
# rsync -a keeps the mtimes, which can be older than the scratch's last build of
# those files: touch what it copied, or cargo would take a stale build as fresh.
rsync -a --delete --out-format='%n' --exclude /mutants-out --exclude /.git --exclude /target \
    ./ "$scratch/" | while read -r f; do
    if [ -f "$scratch/$f" ]; then touch "$scratch/$f"; fi
done
modules=("$@")
# By value: the modules that route, gate and serve first.
[ ${#modules[@]} -gt 0 ] || modules=(router gateway service bus store protocol codec)
for m in "${modules[@]}"; do
    files_of "$m" >/dev/null
    if [ "$pass" != full ]; then rm -rf "${out:?}/$m"; fi
    mkdir -p "$out/$m"
    [ "$pass" = full ] || run "$m" quick
    [ "$pass" = quick ] || run "$m" full
    echo "mutants: $m survivors:" >&2
    cat "$out/$m/mutants.out/missed.txt" >&2 || true
done
