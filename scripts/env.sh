# shellcheck shell=bash
# Environment for the wasm worker's build and tests; source it (bash), from any directory, after
# scripts/setup.sh has run:
#
#   bash scripts/setup.sh && source scripts/env.sh \
#     && (cd worker-wasm && RUSTUP_TOOLCHAIN="$WASM_TOOLCHAIN" wasm-pack test --node)
#
# It changes no shell options. It puts ~/.cargo/bin (rustup's proxies, wasm-pack, wasm-bindgen)
# first on PATH, ahead of Debian's /usr/bin/cargo that the fallback path installs, then
# .tools/node_modules/.bin (wasm-opt from npm binaryen@132), and exports:
#   WASM_TOOLCHAIN  the rustup toolchain that builds wasm32 (`wasm`): use it per command,
#                   `RUSTUP_TOOLCHAIN=$WASM_TOOLCHAIN wasm-pack ...` or `cargo +wasm ...`, not
#                   for the whole shell (on the fallback path it is Debian's rustc, no clippy);
#   CHROMEDRIVER    /usr/bin/chromedriver (read by wasm-bindgen-test-runner);
#   CHROMIUM_BIN    /usr/bin/chromium (for Playwright's executablePath);
#   NODE_PATH       with .tools/node_modules, so require('playwright-core') works from a
#                   CommonJS script in any folder (ES modules ignore NODE_PATH: use
#                   createRequire, or import from "$DISTCHAN_TOOLS/node_modules/playwright-core");
#   DISTCHAN_TOOLS  the .tools folder.

_distchan_repo=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_distchan_cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin

# _distchan_prepend VAR DIR: put DIR first in the colon list VAR, removing other copies of it.
_distchan_prepend() {
    local var=$1 dir=$2 out=$2 p
    local -a parts=()
    IFS=: read -r -a parts <<<"${!var:-}"
    for p in "${parts[@]}"; do
        [ -n "$p" ] && [ "$p" != "$dir" ] && out=$out:$p
    done
    printf -v "$var" '%s' "$out"
}

_distchan_prepend PATH "$_distchan_repo/.tools/node_modules/.bin"
_distchan_prepend PATH "$_distchan_cargo_bin"
_distchan_prepend NODE_PATH "$_distchan_repo/.tools/node_modules"
export PATH NODE_PATH
export WASM_TOOLCHAIN=${WASM_TOOLCHAIN:-wasm}
export CHROMEDRIVER=/usr/bin/chromedriver
export CHROMIUM_BIN=/usr/bin/chromium
export DISTCHAN_TOOLS=$_distchan_repo/.tools

unset -f _distchan_prepend
unset _distchan_repo _distchan_cargo_bin
