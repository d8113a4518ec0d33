#!/usr/bin/env bash
# Runs the demo: the coordinator with its Mandelbrot workload, the volunteer page and one
# local native worker, on built-in defaults. Extra arguments go to distchan-coordinator
# (see `--help`), e.g. `scripts/demo.sh --listen 0.0.0.0:8080 --local-workers 2`.
# The demo lingers: once the picture is done it starts again, round after round, so that
# volunteers who open the page find work, until Ctrl-C (DISTCHAN_LINGER=0: one round).
set -euo pipefail
cd "$(dirname "$0")/.."

# The volunteer page needs the wasm package; build it when the toolchain is there (or can be
# installed), otherwise run without the page's worker.
if bash scripts/setup.sh --build-only >&2 && source scripts/env.sh && bash scripts/build-wasm.sh >&2; then
    :
else
    echo "note: the wasm package could not be built; the page will not be able to volunteer" >&2
fi
cargo build --release --bins
export DISTCHAN_LINGER="${DISTCHAN_LINGER:-1}"
exec target/release/distchan-coordinator "$@"
