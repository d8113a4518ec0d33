#!/usr/bin/env bash
# The browser worker's tests, in order; exits non-zero at the first failure.
#
#   1. the shared known values (frames, task results) checked by the native build
#      (cargo test -p distchan-worker-wasm --test native);
#   2. wasm-pack test --node: the same known values checked by the wasm build, MessagePack <->
#      JavaScript conversions, JavaScript handlers (tests/node.rs);
#   3. wasm-pack test --headless --chrome: BrowserWorker against three real coordinators started
#      here (capitalize, 20 jobs, --verify; one with --token; a pipe of 20 jobs for a task
#      module), whose addresses are compiled into the tests; each must then exit 0 (every
#      result arrived and was right, or none failed);
#   4. scripts/build-wasm.sh: the release package into www/pkg;
#   5. tests/e2e/run.sh: the volunteer page in headless Chromium against the coordinator.
#
# Assumes scripts/setup.sh has run (sources scripts/env.sh itself) and builds the
# coordinator's and the native worker's binaries if they are missing or stale: release ones,
# or debug ones with DISTCHAN_BIN_DIR=target/debug (what scripts/test.sh does, after
# `cargo test` built them).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

LOG_DIR=target/wasm-tests
# shellcheck source=tests/e2e/coordinator.sh
source tests/e2e/coordinator.sh
trap stop_all_coordinators EXIT
trap 'exit 130' INT TERM
mkdir -p "$LOG_DIR"

STEPS=0
SECONDS=0
step() {
    printf '\n==> [wasm %s s] %s\n' "$SECONDS" "$*"
}
done_step() {
    STEPS=$((STEPS + 1))
}

step "known values, native build"
cargo test -p distchan-worker-wasm --test native
done_step

step "wasm-pack test --node"
RUSTUP_TOOLCHAIN="$WASM_TOOLCHAIN" wasm-pack test --node worker-wasm
done_step

step "coordinators for the browser tests"
export DISTCHAN_BIN_DIR=${DISTCHAN_BIN_DIR:-target/release}
if [ "$DISTCHAN_BIN_DIR" = target/debug ]; then
    # Built by `cargo test --workspace` (scripts/test.sh). A `cargo build` here would build
    # the dependencies again: without the tests' dev-dependencies, their features differ.
    for bin in distchan-coordinator distchan-worker; do
        [ -x "target/debug/$bin" ] || {
            echo "test-wasm: target/debug/$bin is missing: run cargo test --workspace first" >&2
            exit 1
        }
    done
else
    cargo build --release --bins
fi
TEST_TOKEN=wasm-test-$RANDOM$RANDOM
start_coordinator plain --demo capitalize --jobs 20 --local-workers 0 --verify
start_coordinator guarded --demo capitalize --jobs 20 --local-workers 0 --verify --token "$TEST_TOKEN"
for _ in $(seq 20); do echo 0; done >"$LOG_DIR/module-jobs.jsonl"
start_coordinator module pipe --module tests/modules/misbehave.wat --input "$LOG_DIR/module-jobs.jsonl" \
    --max-retries 0 --local-workers 0

step "wasm-pack test --headless --chrome (against the coordinators)"
# Compiled into tests/browser.rs by option_env!; the marker makes a missing address a failure.
# Chromium occasionally dies while starting on a loaded machine ("failed to create a Chrome
# session"); no test has run then, so the suite is started again (twice at most).
for attempt in 1 2 3; do
    code=0
    DISTCHAN_TEST_URL="ws://$plain_ADDR/ws" \
        DISTCHAN_TEST_TOKEN_URL="ws://$guarded_ADDR/ws" \
        DISTCHAN_TEST_TOKEN="$TEST_TOKEN" \
        DISTCHAN_TEST_MODULE_URL="ws://$module_ADDR/ws" \
        DISTCHAN_TEST_REQUIRE_COORDINATOR=1 \
        WASM_BINDGEN_TEST_TIMEOUT=120 \
        RUSTUP_TOOLCHAIN="$WASM_TOOLCHAIN" \
        wasm-pack test --headless --chrome worker-wasm 2>&1 | tee "$LOG_DIR/chrome-tests.log" \
        || code=$?
    [ "$code" = 0 ] && break
    if [ "$attempt" = 3 ] || ! grep -q "failed to create a Chrome session" "$LOG_DIR/chrome-tests.log"; then
        exit "$code"
    fi
    echo "test-wasm: Chromium did not start (attempt $attempt); starting the suite again"
done
for name in plain guarded module; do
    code=0
    wait_coordinator "$name" 30 || code=$?
    if [ "$code" != 0 ]; then
        echo "test-wasm: coordinator $name exited $code (expected 0: all 20 jobs answered, none failed)" >&2
        tail -n 20 "$LOG_DIR/$name.out" "$LOG_DIR/$name.err" >&2
        exit 1
    fi
    echo "coordinator $name: every job answered and verified (exit 0)"
done
done_step

step "wasm-pack build into www/pkg"
bash scripts/build-wasm.sh
done_step

step "end to end: the volunteer page in headless Chromium"
bash tests/e2e/run.sh
done_step

echo
echo "test-wasm: all steps passed in $SECONDS s"
echo "test-wasm: $STEPS passed, 0 failed"
