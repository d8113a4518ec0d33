#!/usr/bin/env bash
# Builds the browser worker (worker-wasm/) into www/pkg, where the volunteer page loads it from:
#   wasm-pack build worker-wasm --target web --out-dir ../www/pkg   (release; `--dev` for debug)
# and copies the WASI shim that runs task modules in tabs into www/vendor.
# Assumes scripts/setup.sh has run; sources scripts/env.sh itself. www/pkg is git-ignored.
#
# wasm-pack's own wasm-opt step is off (worker-wasm/Cargo.toml): it would download binaryen.
# When npm binaryen's wasm-opt (set up in .tools by scripts/setup.sh) is on PATH, the release
# module is optimised with it here instead; DISTCHAN_WASM_OPT=0 skips that.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

profile=--release
[ "${1:-}" = "--dev" ] && profile=--dev

RUSTUP_TOOLCHAIN="$WASM_TOOLCHAIN" wasm-pack --quiet build worker-wasm "$profile" --target web \
    --out-dir ../www/pkg --no-pack

wasm=www/pkg/distchan_worker_wasm_bg.wasm
if [ "$profile" = --release ] && [ "${DISTCHAN_WASM_OPT:-1}" != 0 ] \
    && [ -x "$DISTCHAN_TOOLS/node_modules/.bin/wasm-opt" ]; then
    before=$(stat -c %s "$wasm")
    "$DISTCHAN_TOOLS/node_modules/.bin/wasm-opt" -O2 --strip-debug \
        "$wasm" -o "$wasm.opt"
    mv "$wasm.opt" "$wasm"
    echo "build-wasm: wasm-opt -O2: $before -> $(stat -c %s "$wasm") bytes"
fi
echo "build-wasm: www/pkg ready ($(stat -c %s "$wasm") bytes of wasm)"

# The WASI shim the page runs task modules with (npm @bjorn3/browser_wasi_shim, set up in .tools
# by scripts/setup.sh), next to the page: www/task-module.js imports it from ./vendor.
shim=$DISTCHAN_TOOLS/node_modules/@bjorn3/browser_wasi_shim
if [ -f "$shim/dist/index.js" ]; then
    rm -rf www/vendor/browser_wasi_shim
    mkdir -p www/vendor/browser_wasi_shim
    cp "$shim"/dist/*.js "$shim"/LICENSE-* "$shim"/package.json www/vendor/browser_wasi_shim/
    echo "build-wasm: www/vendor/browser_wasi_shim ready ($(node -p "require('$shim/package.json').version" 2>/dev/null || echo '?'))"
else
    echo "build-wasm: note: $shim is missing (run scripts/setup.sh): tabs cannot run task modules" >&2
fi
