#!/usr/bin/env bash
# End-to-end tests of the volunteer page: the real coordinator binary serves www/ (with the
# wasm package in www/pkg) and headless Chromium opens the page, as a volunteer would.
#
#   1. volunteer: a small Mandelbrot picture (--verify); the page (?autostart=1) computes every
#      tile, and the coordinator must exit 0, which it does only when every result arrived
#      and equals the native computation. Screenshot: target/e2e/volunteer.png.
#   2. refused: a coordinator with --token; the page without a token must show the refusal
#      reason. Screenshot: target/e2e/refused.png.
#   3. stopped: the same coordinator, the page with ?token=: it works, then Stop must drain
#      and leave cleanly. Screenshot: target/e2e/stopped.png.
#
# Assumes scripts/setup.sh has run (Chromium, playwright-core in .tools) and builds nothing
# but the wasm package if www/pkg is missing; needs target/release/distchan-coordinator.
# Everything it starts is killed when it exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/env.sh
[ -f scripts/env.sh ] && source scripts/env.sh
LOG_DIR=target/e2e
# shellcheck source=tests/e2e/coordinator.sh
source tests/e2e/coordinator.sh

NODE_PID=""
cleanup() {
    local code=$?
    if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then kill "$NODE_PID" 2>/dev/null || true; fi
    stop_all_coordinators
    if [ "$code" != 0 ]; then
        echo "e2e: FAILED (exit $code); logs and screenshots in $LOG_DIR/" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.png

if [ ! -f www/pkg/distchan_worker_wasm_bg.wasm ]; then
    echo "e2e: www/pkg is missing; building the wasm package"
    bash scripts/build-wasm.sh
fi

# browse ARGS...: runs volunteer.mjs (bounded), killable by the trap.
browse() {
    timeout 240 node tests/e2e/volunteer.mjs "$@" &
    NODE_PID=$!
    local code=0
    wait "$NODE_PID" || code=$?
    NODE_PID=""
    return "$code"
}

passed=0
SECONDS=0

echo "== e2e 1: a tab volunteers for a Mandelbrot picture (--verify)"
WIDTH=320 HEIGHT=200 TILE=40
TILES=$(((WIDTH + TILE - 1) / TILE * ((HEIGHT + TILE - 1) / TILE)))
start_coordinator volunteer --demo mandelbrot --width "$WIDTH" --height "$HEIGHT" --tile "$TILE" \
    --max-iter 500 --output "$LOG_DIR/mandelbrot.png" --local-workers 0 --verify --static-dir www
browse --url "http://$volunteer_ADDR/?autostart=1" --expect finished --jobs "$TILES" \
    --tiles "$TILES" --screenshot "$LOG_DIR/volunteer.png" --timeout 120
code=0
wait_coordinator volunteer 120 || code=$?
if [ "$code" != 0 ]; then
    echo "e2e: the coordinator exited $code (expected 0: every tile computed and verified)" >&2
    tail -n 20 "$LOG_DIR/volunteer.out" "$LOG_DIR/volunteer.err" >&2
    exit 1
fi
echo "ok: $TILES tiles computed by the tab and verified by the coordinator; picture in $LOG_DIR/mandelbrot.png"
passed=$((passed + 1))

echo "== e2e 2: a coordinator that wants a token refuses the tab, and the page says why"
TOKEN=e2e-$RANDOM$RANDOM
start_coordinator guarded --demo capitalize --jobs 1000000 --token "$TOKEN" --local-workers 0 \
    --static-dir www
browse --url "http://$guarded_ADDR/?autostart=1" --expect refused \
    --text "an access token is required" --screenshot "$LOG_DIR/refused.png" --timeout 60
echo "ok: the refusal reason reached the page"
passed=$((passed + 1))

echo "== e2e 3: with ?token= the tab works; Stop drains and leaves cleanly"
browse --url "http://$guarded_ADDR/?autostart=1&token=$TOKEN" --expect stopped \
    --stop-after-jobs 200 --screenshot "$LOG_DIR/stopped.png" --timeout 60
grep -q "worker is draining" "$LOG_DIR/guarded.err" || {
    echo "e2e: the coordinator never heard a drain:" >&2
    tail -n 30 "$LOG_DIR/guarded.err" >&2
    exit 1
}
stop_coordinator guarded
echo "ok: the tab drained and left"
passed=$((passed + 1))

echo "e2e: took ${SECONDS} s"
echo "e2e: $passed passed, 0 failed"
