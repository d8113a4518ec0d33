# shellcheck shell=bash
# Helpers to run real coordinators in tests; sourced by tests/e2e/run.sh and
# scripts/test-wasm.sh. Every coordinator started here is killed by `stop_all_coordinators`
# (install it in an EXIT trap).
#
#   start_coordinator NAME ARGS...   starts `distchan-coordinator ARGS... --listen 127.0.0.1:0`
#                                    (or on $COORDINATOR_LISTEN, e.g. a restarted one's address)
#                                    with stdout/stderr in $LOG_DIR/NAME.{out,err}, waits for
#                                    its address, and sets NAME_ADDR and NAME_PID
#   wait_coordinator NAME SECONDS    waits at most SECONDS for it to exit; returns its exit code
#                                    (124 and kills it when it is still running)
#   stop_coordinator NAME            interrupts it (as Ctrl-C would) and reaps it
#   stop_all_coordinators            kills every coordinator still running

BIN_DIR=${DISTCHAN_BIN_DIR:-target/release}
COORDINATOR_BIN=${COORDINATOR_BIN:-$BIN_DIR/distchan-coordinator}
LOG_DIR=${LOG_DIR:-target/e2e}
_COORDINATOR_PIDS=()

# The coordinator reads DISTCHAN_* variables as defaults for its flags (DISTCHAN_TOKEN,
# DISTCHAN_DEMO, ...): none of the caller's may leak into a test.
_clean_env_args() {
    local v
    for v in $(compgen -e); do
        case $v in DISTCHAN_*) printf -- '-u\n%s\n' "$v" ;; esac
    done
}

start_coordinator() {
    local name=$1 addr="" pid i
    shift
    [ -x "$COORDINATOR_BIN" ] || {
        echo "error: $COORDINATOR_BIN is missing: build it with cargo build --bins (--release for target/release)" >&2
        return 1
    }
    mkdir -p "$LOG_DIR"
    # A previous run's log must not be read for this run's address.
    rm -f "$LOG_DIR/$name.out" "$LOG_DIR/$name.err"
    local -a unset_args=()
    mapfile -t unset_args < <(_clean_env_args)
    env "${unset_args[@]}" RUST_LOG="${COORDINATOR_LOG:-info}" NO_COLOR=1 \
        "$COORDINATOR_BIN" "$@" --listen "${COORDINATOR_LISTEN:-127.0.0.1:0}" \
        >"$LOG_DIR/$name.out" 2>"$LOG_DIR/$name.err" &
    pid=$!
    _COORDINATOR_PIDS+=("$pid")
    for ((i = 0; i < 200; i++)); do
        # The file appears once the background shell has opened it.
        # On stdout, or on stderr in pipe mode (stdout carries the results).
        addr=$(sed -n 's/^distchan coordinator listening on //p' "$LOG_DIR/$name.out" \
            "$LOG_DIR/$name.err" 2>/dev/null | head -n 1 || true)
        [ -n "$addr" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: coordinator $name exited before listening:" >&2
            cat "$LOG_DIR/$name.out" "$LOG_DIR/$name.err" >&2
            return 1
        fi
        sleep 0.05
    done
    if [ -z "$addr" ]; then
        echo "error: coordinator $name printed no address within 10 s" >&2
        return 1
    fi
    printf -v "${name}_ADDR" '%s' "$addr"
    printf -v "${name}_PID" '%s' "$pid"
    echo "coordinator $name: pid $pid on $addr (logs: $LOG_DIR/$name.{out,err})"
}

wait_coordinator() {
    local name=$1 seconds=$2 pid_var="${1}_PID" pid code i
    pid=${!pid_var}
    for ((i = 0; i < seconds * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "error: coordinator $name still running after $seconds s; killing it" >&2
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        _forget "$pid"
        return 124
    fi
    code=0
    wait "$pid" || code=$?
    _forget "$pid"
    return "$code"
}

stop_coordinator() {
    local pid_var="${1}_PID" pid
    pid=${!pid_var}
    kill -INT "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    _forget "$pid"
}

# _forget PID: a reaped coordinator is not killed again (its pid may be reused).
_forget() {
    local keep=() p
    for p in ${_COORDINATOR_PIDS[@]+"${_COORDINATOR_PIDS[@]}"}; do [ "$p" = "$1" ] || keep+=("$p"); done
    _COORDINATOR_PIDS=("${keep[@]}")
}

stop_all_coordinators() {
    local pid
    for pid in ${_COORDINATOR_PIDS[@]+"${_COORDINATOR_PIDS[@]}"}; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            sleep 0.2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
