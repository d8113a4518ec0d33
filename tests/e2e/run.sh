#!/usr/bin/env bash
# End-to-end tests of the volunteer page: the real coordinator binary serves www/ (with the
# wasm package in www/pkg) and headless Chromium opens the page, as a volunteer would.
#
#   1. volunteer: a small Mandelbrot picture (--verify); the page (?autostart=1) computes every
#      tile, and the coordinator must exit 0, which it does only when every result arrived
#      and equals the native computation. Screenshot: target/e2e/volunteer.png.
#   2. refused: a coordinator with --token; the page without a token must show the refusal
#      reason. Screenshot: target/e2e/refused.png.
#   3. stopped: the same coordinator (--max-retries 0), the page with ?token=: it works, then
#      Stop must drain and leave cleanly; twenty times, and no job fails or is dispatched
#      again. Screenshot: target/e2e/stopped.png.
#   4. dashboard: a larger picture; the dashboard, open in a second tab while the volunteer
#      works, lists the browser worker and paints its tiles; every tile is verified.
#      Screenshot: target/e2e/dashboard.png.
#   5. closed tab: the volunteer tab is closed mid-run; a native worker started afterwards
#      finishes, and every job's verified result still arrives exactly once (nothing lost).
#   6. task modules: pipe mode with the example module wordfreq (command, then reactor) on
#      1000 texts, once computed by the tab alone and once by a native worker alone: the
#      result files are identical, byte for byte (and the two ABIs agree).
#   7. stuck tab: a module job that never returns; the page restarts the thread after the
#      module's time limit, the job is reported lost (--max-retries 0), the others succeed.
#   8. restarted coordinator: the coordinator is killed mid-run and a new one started on the
#      same port; the same page connects again by itself and does the new run's work.
#   9. frozen tab: the page's renderer is stopped (SIGSTOP) while it holds jobs, its sockets
#      open; under the default heartbeat (speculation off, so that the heartbeat is what
#      acts) the coordinator declares it dead within two intervals and a native worker
#      started afterwards finishes every job.
#  10. network failure: with a reconnect grace, the tab reaches the coordinator through a proxy
#      that drops every connection mid-run (no close frames); each of the tab's threads comes
#      back, resumes its session and keeps the jobs it held, and every job's verified result
#      arrives exactly once.
#  11. paused: the volunteer presses Pause mid-run; the tab finishes what it holds, hands back
#      the rest, does no job while paused and the dashboard lists its threads as paused; after
#      Resume it finishes, and (--max-retries 0) no job failed: pausing loses nothing.
#  12. replicas: with --replicas 2, a tab (two threads, one browser) and a local native worker;
#      the tab's threads count as one voter, so every job is also computed by the native
#      worker: it did exactly all of them, and every result is verified.
#
# Assumes scripts/setup.sh has run (Chromium, playwright-core in .tools) and builds nothing
# but the wasm package if www/pkg is missing; needs the binaries in $DISTCHAN_BIN_DIR
# (target/release by default; scripts/test.sh uses the debug ones).
# Everything it starts is killed when it exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=scripts/env.sh
[ -f scripts/env.sh ] && source scripts/env.sh
LOG_DIR=target/e2e
# shellcheck source=tests/e2e/coordinator.sh
source tests/e2e/coordinator.sh

NODE_PID=""
PROXY_PID=""
cleanup() {
    local code=$?
    if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then kill "$NODE_PID" 2>/dev/null || true; fi
    if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then kill "$PROXY_PID" 2>/dev/null || true; fi
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

# wait_ready FILE: waits (at most 120 s) for the page's driver in the background ($NODE_PID)
# to create FILE, saying the tab works; fails if the driver ends or time runs out first.
wait_ready() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [ -f "$1" ] || ! kill -0 "$NODE_PID" 2>/dev/null && break
        sleep 0.1
    done
    [ -f "$1" ] || { echo "e2e: the tab never got to work" >&2; exit 1; }
}

passed=0
SECONDS=0

# expect_verified NAME JOBS: the coordinator NAME exits 0 within 120 s having verified JOBS results.
expect_verified() {
    local name=$1 jobs=$2 code=0
    wait_coordinator "$name" 120 || code=$?
    if [ "$code" != 0 ]; then
        echo "e2e: coordinator $name exited $code (expected 0: every job answered and verified)" >&2
        tail -n 20 "$LOG_DIR/$name.out" "$LOG_DIR/$name.err" >&2
        exit 1
    fi
    grep -q "verify: $jobs results checked, 0 mismatches" "$LOG_DIR/$name.out" || {
        echo "e2e: coordinator $name did not verify $jobs results:" >&2
        cat "$LOG_DIR/$name.out" >&2
        exit 1
    }
}

echo "== e2e 1: a tab volunteers for a Mandelbrot picture (--verify)"
WIDTH=320 HEIGHT=200 TILE=40
TILES=$(((WIDTH + TILE - 1) / TILE * ((HEIGHT + TILE - 1) / TILE)))
start_coordinator volunteer --demo mandelbrot --width "$WIDTH" --height "$HEIGHT" --tile "$TILE" \
    --max-iter 500 --output "$LOG_DIR/mandelbrot.png" --local-workers 0 --verify --static-dir www
browse --url "http://$volunteer_ADDR/?autostart=1" --expect finished --jobs "$TILES" \
    --tiles "$TILES" --screenshot "$LOG_DIR/volunteer.png" --timeout 120
expect_verified volunteer "$TILES"
echo "ok: $TILES tiles computed by the tab and verified by the coordinator; picture in $LOG_DIR/mandelbrot.png"
passed=$((passed + 1))

echo "== e2e 2: a coordinator that wants a token refuses the tab, and the page says why"
TOKEN=e2e-$RANDOM$RANDOM
start_coordinator guarded --demo capitalize --jobs 1000000 --token "$TOKEN" --local-workers 0 \
    --max-retries 0 --static-dir www
browse --url "http://$guarded_ADDR/?autostart=1" --expect refused \
    --text "an access token is required (enter it in the access-token field" --screenshot "$LOG_DIR/refused.png" --timeout 60
echo "ok: the refusal reason reached the page"
passed=$((passed + 1))

echo "== e2e 3: with ?token= the tab works; Stop drains and leaves cleanly, twenty times"
browse --url "http://$guarded_ADDR/?autostart=1&token=$TOKEN" --expect stopped --rounds 20 \
    --stop-after-jobs 200 --screenshot "$LOG_DIR/stopped.png" --timeout 120
grep -q "worker is draining" "$LOG_DIR/guarded.err" || {
    echo "e2e: the coordinator never heard a drain:" >&2
    tail -n 30 "$LOG_DIR/guarded.err" >&2
    exit 1
}
stop_coordinator guarded
# With --max-retries 0 a job lost with a stopping tab would fail; a drain uses no retry.
grep -Eq "^summary: .*, 0 failed, .*, 0 re-dispatched" "$LOG_DIR/guarded.out" || {
    echo "e2e: stopping the tab lost or re-dispatched jobs:" >&2
    grep -E "^summary|failed" "$LOG_DIR/guarded.out" "$LOG_DIR/guarded.err" | head -n 20 >&2
    exit 1
}
# Who did what: the summary lists the tab's threads (gone by then) with their shares.
grep -Eq "^  worker [0-9]+ \(.*, browser\): [0-9]+ jobs \([0-9.]+%\)" "$LOG_DIR/guarded.out" || {
    echo "e2e: the summary does not list the tab's workers and their shares:" >&2
    grep -A 12 "^summary" "$LOG_DIR/guarded.out" >&2
    exit 1
}
echo "ok: the tab drained and left twenty times; no job failed or was dispatched again"
passed=$((passed + 1))

echo "== e2e 4: the dashboard shows the volunteer and the picture while the tab works"
WIDTH=480 HEIGHT=320 TILE=40
TILES=$(((WIDTH + TILE - 1) / TILE * ((HEIGHT + TILE - 1) / TILE)))
start_coordinator watched --demo mandelbrot --width "$WIDTH" --height "$HEIGHT" --tile "$TILE" \
    --max-iter 20000 --output "$LOG_DIR/watched.png" --local-workers 0 --verify --static-dir www
browse --url "http://$watched_ADDR/?autostart=1" --dashboard "http://$watched_ADDR/dashboard" \
    --dashboard-screenshot "$LOG_DIR/dashboard.png" --expect finished --jobs "$TILES" \
    --screenshot "$LOG_DIR/watched-volunteer.png" --timeout 120
expect_verified watched "$TILES"
echo "ok: the dashboard listed the browser worker and painted its tiles; $TILES tiles verified"
passed=$((passed + 1))

echo "== e2e 5: closing the volunteer tab mid-run loses nothing"
# Enough that the tab (tens of thousands of tiny jobs a second) is still at work when closed.
JOBS=100000
start_coordinator closed --demo capitalize --jobs "$JOBS" --local-workers 0 --verify --static-dir www
browse --url "http://$closed_ADDR/?autostart=1" --expect closed --stop-after-jobs 300 \
    --screenshot "$LOG_DIR/closed.png" --timeout 60
"$BIN_DIR"/distchan-worker --url "ws://$closed_ADDR/ws" >"$LOG_DIR/closed-worker.log" 2>&1
expect_verified closed "$JOBS"
grep -q "summary: $JOBS of $JOBS jobs" "$LOG_DIR/closed.out" || {
    echo "e2e: not every job arrived after the tab was closed:" >&2
    cat "$LOG_DIR/closed.out" >&2
    exit 1
}
echo "ok: the tab left mid-run and a native worker finished: $JOBS results, each once, all correct ($(grep -o '[0-9]* re-dispatched' "$LOG_DIR/closed.out"))"
passed=$((passed + 1))

echo "== e2e 6: a task module gives the same bytes in a tab as on a native worker, under both ABIs"
MODULES=target/wasm32-wasip1/task-module
if [ ! -f "$MODULES/wordfreq.wasm" ] || [ ! -f "$MODULES/wordfreq_reactor.wasm" ]; then
    cargo build --quiet --profile task-module --target wasm32-wasip1 -p wordfreq
fi
TEXTS=$LOG_DIR/texts.jsonl
node tests/e2e/texts.mjs 1000 >"$TEXTS"
for module in wordfreq wordfreq_reactor; do
    start_coordinator "tab_$module" pipe --module "$MODULES/$module.wasm" --input "$TEXTS" \
        --ordered --local-workers 0 --static-dir www
    addr_var="tab_${module}_ADDR"
    browse --url "http://${!addr_var}/?autostart=1" --expect finished --jobs 1000 \
        --task "$module.wasm" --screenshot "$LOG_DIR/tab-$module.png" --timeout 180
    code=0
    wait_coordinator "tab_$module" 60 || code=$?
    [ "$code" = 0 ] || {
        echo "e2e: the tab's run of $module exited $code" >&2
        tail -n 20 "$LOG_DIR/tab_$module.err" >&2
        exit 1
    }
    env -u DISTCHAN_TOKEN -u DISTCHAN_AES_KEY RUST_LOG=warn "$BIN_DIR"/distchan-coordinator \
        pipe --listen 127.0.0.1:0 --module "$MODULES/$module.wasm" --input "$TEXTS" --ordered \
        --local-workers 1 >"$LOG_DIR/native-$module.out" 2>"$LOG_DIR/native-$module.err" || {
        echo "e2e: the native run of $module failed:" >&2
        tail -n 20 "$LOG_DIR/native-$module.err" >&2
        exit 1
    }
    [ "$(wc -l <"$LOG_DIR/native-$module.out")" = 1000 ] || {
        echo "e2e: the native run of $module wrote $(wc -l <"$LOG_DIR/native-$module.out") lines, not 1000" >&2
        exit 1
    }
    cmp "$LOG_DIR/tab_$module.out" "$LOG_DIR/native-$module.out" || {
        echo "e2e: $module: the tab's results differ from the native worker's" >&2
        diff "$LOG_DIR/tab_$module.out" "$LOG_DIR/native-$module.out" | head -n 10 >&2
        exit 1
    }
    echo "ok: $module: 1000 results from the tab, byte for byte those of a native worker"
done
cmp "$LOG_DIR/native-wordfreq.out" "$LOG_DIR/native-wordfreq_reactor.out" || {
    echo "e2e: the command and the reactor form of wordfreq disagree" >&2
    exit 1
}
passed=$((passed + 1))

echo "== e2e 7: a tab stuck in a job past the module's time limit is restarted; only that job fails"
printf '0\n2\n7\n8\n9\n70\n' >"$LOG_DIR/stuck.jsonl"
start_coordinator stuck pipe --module tests/modules/misbehave.wat --module-timeout-ms 1000 \
    --max-retries 0 --input "$LOG_DIR/stuck.jsonl" --ordered --local-workers 0 --static-dir www
# (The page's count may miss jobs the stuck thread finished in its last quarter second: it
# reports progress four times a second. The coordinator's output is the record.)
browse --url "http://$stuck_ADDR/?autostart=1&threads=1&capacity=1" --expect finished \
    --text "ran a job past the module's time limit" --screenshot "$LOG_DIR/stuck.png" --timeout 60
code=0
wait_coordinator stuck 30 || code=$?
[ "$code" = 2 ] || {
    echo "e2e: the stuck run exited $code, not 2 (one job failed)" >&2
    tail -n 20 "$LOG_DIR/stuck.err" >&2
    exit 1
}
grep -E '"line":2[,}]' "$LOG_DIR/stuck.out" | grep -q '"error":"the job was lost with its worker' || {
    echo "e2e: the stuck job's line does not report it lost:" >&2
    cat "$LOG_DIR/stuck.out" >&2
    exit 1
}
[ "$(grep -c '"value":' "$LOG_DIR/stuck.out")" = 5 ] || {
    echo "e2e: the other five jobs did not all succeed:" >&2
    cat "$LOG_DIR/stuck.out" >&2
    exit 1
}
echo "ok: the stuck thread was restarted, its job reported lost, the other five answered"
passed=$((passed + 1))

echo "== e2e 8: the coordinator restarts mid-run; the same tab comes back and does the new run"
start_coordinator restart1 --demo capitalize --jobs 1000000 --local-workers 0 --static-dir www
rm -f "$LOG_DIR/restart.ready"
timeout 240 node tests/e2e/volunteer.mjs --url "http://$restart1_ADDR/?autostart=1" \
    --expect restarted --stop-after-jobs 300 --ready-file "$LOG_DIR/restart.ready" \
    --screenshot "$LOG_DIR/restarted.png" --timeout 120 &
NODE_PID=$!
wait_ready "$LOG_DIR/restart.ready"
# A crash, not a shutdown: the tab sees its connection drop.
kill -KILL "$restart1_PID"
wait "$restart1_PID" 2>/dev/null || true
_forget "$restart1_PID"
# Enough jobs that the second run lasts until both of the tab's threads are back: each one
# reconnects after its own random delay, and one thread alone does 2,000 jobs in a blink.
COORDINATOR_LISTEN=$restart1_ADDR start_coordinator restart2 --demo capitalize --jobs 300000 \
    --local-workers 0 --verify --static-dir www
code=0
wait "$NODE_PID" || code=$?
NODE_PID=""
[ "$code" = 0 ] || { echo "e2e: the page did not finish the second run" >&2; exit 1; }
expect_verified restart2 300000
grep -q 'agent=volunteer tab' "$LOG_DIR/restart2.err" || {
    echo "e2e: the tab never joined the restarted coordinator" >&2
    exit 1
}
echo "ok: the tab connected again to the restarted coordinator and did its 300000 jobs, verified"
passed=$((passed + 1))

echo "== e2e 9: a frozen tab's jobs move on within two heartbeats (default heartbeat)"
# Enough that the tab is still at work when its renderers are frozen. Without speculation:
# with it, the native worker, idle at the end, would take over the frozen tab's jobs before
# the heartbeat this scenario is about declares the tab dead.
JOBS=200000
start_coordinator frozen --demo capitalize --jobs "$JOBS" --local-workers 0 --verify --static-dir www \
    --no-speculation
rm -f "$LOG_DIR/frozen.ready" "$LOG_DIR/frozen.release"
timeout 240 node tests/e2e/volunteer.mjs --url "http://$frozen_ADDR/?autostart=1" \
    --expect frozen --stop-after-jobs 300 --ready-file "$LOG_DIR/frozen.ready" \
    --release-file "$LOG_DIR/frozen.release" --timeout 120 &
NODE_PID=$!
wait_ready "$LOG_DIR/frozen.ready"
"$BIN_DIR"/distchan-worker --url "ws://$frozen_ADDR/ws" --once >"$LOG_DIR/frozen-worker.log" 2>&1 &
# The default heartbeat is 5 s: two intervals, plus time for the native worker's share.
expect_verified frozen "$JOBS"
touch "$LOG_DIR/frozen.release"
wait "$NODE_PID" || { echo "e2e: the frozen page's driver failed" >&2; exit 1; }
NODE_PID=""
grep -q "no sign of life" "$LOG_DIR/frozen.err" || {
    echo "e2e: the coordinator did not declare the frozen tab dead:" >&2
    tail -n 20 "$LOG_DIR/frozen.err" >&2
    exit 1
}
grep -q "summary: $JOBS of $JOBS jobs" "$LOG_DIR/frozen.out" || {
    echo "e2e: not every job arrived after the tab froze:" >&2
    cat "$LOG_DIR/frozen.out" >&2
    exit 1
}
echo "ok: the frozen tab was declared dead ($(grep -o 'no sign of life for [^ ]*' "$LOG_DIR/frozen.err" | head -n 1)) and a native worker finished: $JOBS results, each once"
passed=$((passed + 1))

echo "== e2e 10: the network fails mid-run; the tab resumes its sessions and keeps its jobs"
# Tiles that take a while, so that the tab's threads are computing when the network fails
# (480x320, 384 tiles, took a fast machine's tab under a second: the run was over before the
# network failed).
WIDTH=960 HEIGHT=640 TILE=20
TILES=$(((WIDTH + TILE - 1) / TILE * ((HEIGHT + TILE - 1) / TILE)))
start_coordinator blip --demo mandelbrot --width "$WIDTH" --height "$HEIGHT" --tile "$TILE" \
    --max-iter 20000 --local-workers 0 --verify --static-dir www --reconnect-grace-ms 30000
rm -f "$LOG_DIR/proxy.addr" "$LOG_DIR/blip.ready"
node tests/e2e/proxy.mjs "$blip_ADDR" "$LOG_DIR/proxy.addr" >"$LOG_DIR/proxy.log" 2>&1 &
PROXY_PID=$!
for ((i = 0; i < 100; i++)); do [ -s "$LOG_DIR/proxy.addr" ] && break; sleep 0.1; done
[ -s "$LOG_DIR/proxy.addr" ] || { echo "e2e: the proxy did not start" >&2; exit 1; }
timeout 240 node tests/e2e/volunteer.mjs --url "http://$(cat "$LOG_DIR/proxy.addr")/?autostart=1" \
    --expect restarted --stop-after-jobs 40 --ready-file "$LOG_DIR/blip.ready" \
    --screenshot "$LOG_DIR/blip.png" --timeout 120 &
NODE_PID=$!
wait_ready "$LOG_DIR/blip.ready"
kill -USR1 "$PROXY_PID"
code=0
wait "$NODE_PID" || code=$?
NODE_PID=""
[ "$code" = 0 ] || { echo "e2e: the page did not finish after the network failure" >&2; exit 1; }
expect_verified blip "$TILES"
kill "$PROXY_PID" 2>/dev/null || true
PROXY_PID=""
grep -q "dropping [1-9]" "$LOG_DIR/proxy.log" || { echo "e2e: the proxy dropped no connection" >&2; exit 1; }
# A thread that came back keeps the jobs it was computing (kept=N, N > 0): none of them is
# computed again.
grep "resumed its session" "$LOG_DIR/blip.err" | grep -q "kept=[1-9]" || {
    echo "e2e: no thread of the tab came back and kept its jobs:" >&2
    grep -E "worker (joined|lost|came back)" "$LOG_DIR/blip.err" | tail -n 20 >&2
    exit 1
}
resumed=$(grep "resumed its session" "$LOG_DIR/blip.err" | grep -o "kept=[0-9]*" | tr '\n' ' ')
echo "ok: the network failed mid-run; the tab's threads resumed their sessions (${resumed% }), $TILES tiles verified, each once"
passed=$((passed + 1))

echo "== e2e 11: the volunteer pauses mid-run, then resumes; nothing is lost"
JOBS=300000
start_coordinator paused --demo capitalize --jobs "$JOBS" --local-workers 0 --verify --max-retries 0 \
    --static-dir www
browse --url "http://$paused_ADDR/?autostart=1" --expect paused --stop-after-jobs 300 \
    --dashboard-check "http://$paused_ADDR/dashboard" --screenshot "$LOG_DIR/paused.png" --timeout 120
expect_verified paused "$JOBS"
grep -q "summary: $JOBS of $JOBS jobs in [0-9.]*s ([0-9.]* jobs/s), 0 failed" "$LOG_DIR/paused.out" || {
    echo "e2e: not every job succeeded after the pause:" >&2
    cat "$LOG_DIR/paused.out" >&2
    exit 1
}
grep -q "worker paused" "$LOG_DIR/paused.err" || { echo "e2e: the coordinator saw no pause" >&2; exit 1; }
echo "ok: the tab paused (nothing done meanwhile, shown paused on the dashboard), resumed and finished: $JOBS results verified, none failed"
passed=$((passed + 1))

echo "== e2e 12: with --replicas 2, the threads of one tab count as one browser"
JOBS=20000
start_coordinator replicas --demo capitalize --jobs "$JOBS" --replicas 2 --local-workers 1 --verify \
    --static-dir www
browse --url "http://$replicas_ADDR/?autostart=1" --expect finished --jobs "$JOBS" \
    --screenshot "$LOG_DIR/replicas.png" --timeout 120
expect_verified replicas "$JOBS"
# Two groups (the browser, the native worker) and two votes per job: the native worker voted
# on every job, and half of all the votes are its.
grep -qE "^  worker [0-9]+ \(local worker 1, native\): $JOBS jobs \(50\.0%\)" "$LOG_DIR/replicas.out" || {
    echo "e2e: the native worker did not compute every job (two threads of the tab voted together?):" >&2
    cat "$LOG_DIR/replicas.out" >&2
    exit 1
}
echo "ok: every job computed by the tab and by the native worker, $JOBS results agreed and verified"
passed=$((passed + 1))

echo "e2e: took ${SECONDS} s"
echo "e2e: $passed passed, 0 failed"
