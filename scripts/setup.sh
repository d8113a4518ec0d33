#!/usr/bin/env bash
# Idempotent setup for building and testing the wasm worker (worker-wasm/) on a Debian 12 x86_64
# machine with rustup stable, as root, whose network reaches only crates.io, PyPI, Debian's apt
# and the npm registry. Nothing is downloaded from anywhere else (no rustup-less toolchain
# downloads, no `npx playwright install`, no prebuilt binaries from the web).
#
# What it makes sure of (every step checks first, so a re-run on a ready machine takes seconds):
#   1. a rustup toolchain named `wasm` that can build for wasm32-unknown-unknown:
#        - normal path: `rustup target add wasm32-unknown-unknown` (60 s timeout) on stable, and
#          `wasm` linked to stable's sysroot;
#        - fallback (rustup's download server unreachable): Debian's rustc-web 1.9x, its std for
#          wasm32 built once from rust-web-src with -Zbuild-std into
#          /usr/lib/rustlib/wasm32-unknown-unknown/lib, and `wasm` linked to a folder of links to
#          /usr/bin's rustc/cargo/...;
#   2. Chromium and ChromeDriver from Debian (/usr/bin/chromium, /usr/bin/chromedriver);
#   3. npm `binaryen@132` (wasm-opt), `playwright-core` and `@bjorn3/browser_wasi_shim` (the
#      WASI shim tabs run task modules with) in the git-ignored $REPO/.tools; Debian's
#      `binaryen` is never used (too old: its output breaks in Chromium);
#   4. `wasm-bindgen-cli` at exactly the version of `wasm-bindgen` in Cargo.lock;
#   5. `wasm-pack` 0.15.1;
#   6. the `wasm32-wasip1` target on the base toolchain, to build the example task modules
#      (`cargo build --profile task-module --target wasm32-wasip1 -p wordfreq`);
#   7. Debian's `nats-server` (JetStream), which the tests of several coordinators sharing one
#      queue start on free loopback ports (not with --build-only).
#
# Usage (from any directory):
#   bash scripts/setup.sh && source scripts/env.sh \
#     && (cd worker-wasm && RUSTUP_TOOLCHAIN="$WASM_TOOLCHAIN" wasm-pack test --node)
#   then e.g. `RUSTUP_TOOLCHAIN=$WASM_TOOLCHAIN wasm-pack test --headless --chrome`,
#   `RUSTUP_TOOLCHAIN=$WASM_TOOLCHAIN wasm-pack build --target web`, or `cargo +wasm build
#   -p <wasm crate> --target wasm32-unknown-unknown`. scripts/env.sh puts ~/.cargo/bin first on
#   PATH, then .tools/node_modules/.bin (wasm-opt), and exports WASM_TOOLCHAIN, CHROMEDRIVER,
#   CHROMIUM_BIN and NODE_PATH (so a CommonJS script anywhere can require('playwright-core')).
#   Use RUSTUP_TOOLCHAIN=wasm only for the wasm commands: on the fallback path it is Debian's
#   rustc, which has no clippy/rustfmt.
#
# `bash scripts/setup.sh --build-only` skips Chromium: enough to build the wasm package
# (what scripts/demo.sh needs), not to test it.
#
# Environment overrides (all optional):
#   WASM_BINDGEN_VERSION     wasm-bindgen-cli version to install instead of the one in Cargo.lock
#   PLAYWRIGHT_CORE_VERSION  npm playwright-core version (default 1.64.1, the one measured here)
#   NPM_TIMEOUT              seconds allowed for the npm install (default 300)
#   WASM_TOOLCHAIN           name of the rustup toolchain to create (default `wasm`)
#   WASM_FORCE_FALLBACK=1    skip rustup's target download and use the Debian fallback (for testing)
set -euo pipefail

START_SECONDS=$SECONDS
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

TARGET=wasm32-unknown-unknown
TC=${WASM_TOOLCHAIN:-wasm}
WASM_PACK_VERSION=0.15.1
BINARYEN_MAJOR=132
PLAYWRIGHT_CORE_VERSION=${PLAYWRIGHT_CORE_VERSION:-1.64.1}
WASI_SHIM_VERSION=0.4.2
NPM_TIMEOUT=${NPM_TIMEOUT:-300}
TOOLS_DIR=$REPO/.tools
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
FALLBACK_TC_DIR=$HOME/.local/share/wasm-debian-toolchain
DEBIAN_WASM_LIBDIR=/usr/lib/rustlib/$TARGET/lib

# The same order scripts/env.sh gives callers: rustup's proxies before Debian's /usr/bin/cargo.
export PATH="$CARGO_BIN:$TOOLS_DIR/node_modules/.bin:$PATH"
# A caller's RUSTUP_TOOLCHAIN=wasm would break rustup before the toolchain exists.
unset RUSTUP_TOOLCHAIN

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

WORK_TMP=$(mktemp -d "${TMPDIR:-/tmp}/distchan-setup.XXXXXX")
trap 'rm -rf "$WORK_TMP"' EXIT

# --- apt helpers ---------------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        [ "$(id -u)" = 0 ] || die "need root for apt-get (missing Debian packages: $*)"
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$WORK_TMP/apt.log" 2>&1 \
            || { tail -n 20 "$WORK_TMP/apt.log" >&2; die "apt-get update failed (log above)"; }
        APT_UPDATED=1
    fi
}
is_installed_deb() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
# apt_install PKG...: installs those of PKG that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do is_installed_deb "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -gt 0 ] || return 0
    apt_update_once "${missing[@]}"
    apt_get_install "${missing[@]}"
}
apt_get_install() {
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$WORK_TMP/apt.log" 2>&1 \
        || { tail -n 20 "$WORK_TMP/apt.log" >&2; die "apt-get install $* failed (log above)"; }
}

# --- 0. basics -----------------------------------------------------------------------------------
command -v rustup >/dev/null 2>&1 || die "rustup not found (expected in $CARGO_BIN)"

toolchain_names() { rustup toolchain list 2>/dev/null | awk '{print $1}'; }
has_toolchain() { toolchain_names | grep -qxF "$1"; }

# The toolchain whose sysroot `wasm` is linked to on the normal path: stable, else the default.
base_toolchain() {
    if toolchain_names | grep -q '^stable-'; then
        echo stable
    else
        rustup default 2>/dev/null | awk '{print $1; exit}'
    fi
}

# wasm_build_check CMD...: can CMD (a rustc) build a tiny cdylib that uses std for wasm32?
wasm_build_check() {
    local d=$WORK_TMP/check
    rm -rf "$d" && mkdir -p "$d"
    cat >"$d/t.rs" <<'EOF'
#[no_mangle]
pub extern "C" fn answer() -> u32 {
    let v: Vec<u32> = vec![40, 2];
    v.iter().sum::<u32>() + format!("{}", 1).len() as u32 - 1
}
EOF
    "$@" --edition 2021 --target "$TARGET" --crate-type cdylib -O -o "$d/t.wasm" "$d/t.rs" \
        >"$d/log" 2>&1 && [ -s "$d/t.wasm" ]
}
toolchain_works() {
    has_toolchain "$1" \
        && rustup run "$1" cargo --version >/dev/null 2>&1 \
        && wasm_build_check rustup run "$1" rustc
}

# --- 1. the `wasm` rustup toolchain --------------------------------------------------------------
# Debian fallback, step A: std for wasm32 built from rust-web-src with Debian's own rustc/cargo.
build_debian_wasm_std() {
    local d=$WORK_TMP/stdbuild
    [ -d /usr/lib/rustlib/src/rust/library ] \
        || die "rust-web-src did not provide /usr/lib/rustlib/src/rust/library"
    rm -rf "$d" && mkdir -p "$d/src"
    cat >"$d/Cargo.toml" <<'EOF'
[package]
name = "wasm_std_build"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]
path = "src/lib.rs"

[workspace]
EOF
    printf '#[no_mangle]\npub extern "C" fn f() -> u32 { vec![1u32].len() as u32 }\n' >"$d/src/lib.rs"
    say "building Debian rustc's std for $TARGET (once, about 40 s)"
    if ! (cd "$d" && env -u RUSTUP_TOOLCHAIN -u RUSTC_WRAPPER -u CARGO_BUILD_TARGET \
            -u CARGO_BUILD_RUSTC_WRAPPER -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
            PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
            RUSTFLAGS=-Cembed-bitcode=yes CARGO_TARGET_DIR="$d/target" \
            /usr/bin/cargo build --release --target "$TARGET" \
            -Zbuild-std=std,panic_abort,panic_unwind,test,proc_macro) >"$d/log" 2>&1; then
        tail -n 30 "$d/log" >&2
        die "building std for $TARGET with Debian's rustc-web failed (log above)"
    fi
    local deps=$d/target/$TARGET/release/deps f n=0
    rm -rf "$DEBIAN_WASM_LIBDIR"
    mkdir -p "$DEBIAN_WASM_LIBDIR"
    for f in "$deps"/lib*.rlib "$deps"/lib*.rmeta; do
        [ -e "$f" ] || continue
        case "$(basename "$f")" in libwasm_std_build*) continue ;; esac
        cp "$f" "$DEBIAN_WASM_LIBDIR/"
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || die "the std build produced no rlibs in $deps"
}

# Debian fallback: rustc-web + rust-web-src + rust-lld, std built once, `wasm` linked to /usr/bin.
setup_debian_fallback() {
    say "wasm32 target: using Debian's rustc-web fallback"
    apt_install rustc-web cargo-web rust-web-src rust-web-llvm lld-22
    local b
    for b in rustc cargo rust-lld; do
        [ -x "/usr/bin/$b" ] || die "/usr/bin/$b missing after installing Debian's rustc-web set"
    done
    if wasm_build_check /usr/bin/rustc; then
        say "Debian rustc's std for $TARGET: present"
    else
        build_debian_wasm_std
        wasm_build_check /usr/bin/rustc || {
            cat "$WORK_TMP/check/log" >&2
            die "Debian's rustc still cannot build for $TARGET after building std"
        }
    fi
    rm -rf "$FALLBACK_TC_DIR"
    mkdir -p "$FALLBACK_TC_DIR/bin" "$FALLBACK_TC_DIR/lib" # rustup refuses a folder without lib/
    for b in rustc rustdoc cargo rust-lld rust-gdb rust-gdbgui rust-lldb; do
        if [ -e "/usr/bin/$b" ]; then ln -s "/usr/bin/$b" "$FALLBACK_TC_DIR/bin/$b"; fi
    done
    rustup toolchain link "$TC" "$FALLBACK_TC_DIR" >/dev/null
}

setup_wasm_toolchain() {
    if toolchain_works "$TC"; then
        say "wasm32 toolchain '$TC': present ($(rustup run "$TC" rustc --version))"
        return
    fi
    if [ -z "${WASM_FORCE_FALLBACK:-}" ]; then
        local base sysroot
        base=$(base_toolchain)
        [ -n "$base" ] || die "no rustup toolchain installed (rustup default is unset)"
        if rustup target list --installed --toolchain "$base" 2>/dev/null | grep -qx "$TARGET"; then
            say "wasm32 target on $base: present"
        else
            say "wasm32 target: installing with rustup on $base (timeout 60 s)"
            timeout 60 rustup target add --toolchain "$base" "$TARGET" >/dev/null 2>&1 \
                || say "rustup target add failed or timed out"
        fi
        if rustup target list --installed --toolchain "$base" 2>/dev/null | grep -qx "$TARGET"; then
            sysroot=$(rustup run "$base" rustc --print sysroot)
            say "linking rustup toolchain '$TC' -> $sysroot"
            rustup toolchain link "$TC" "$sysroot" >/dev/null
            if toolchain_works "$TC"; then
                say "wasm32 toolchain '$TC': ready ($(rustup run "$TC" rustc --version))"
                return
            fi
            sed -n 1,20p "$WORK_TMP/check/log" >&2
            say "rustup's $TARGET target is installed but a test build failed; trying the fallback"
        fi
    fi
    setup_debian_fallback
    toolchain_works "$TC" || {
        cat "$WORK_TMP/check/log" >&2
        die "toolchain '$TC' still cannot build for $TARGET"
    }
    say "wasm32 toolchain '$TC': ready via Debian ($(rustup run "$TC" rustc --version))"
}

# --- 2. Chromium and ChromeDriver from Debian ----------------------------------------------------
setup_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        say "chromium + chromedriver: present"
        return
    fi
    apt_update_once chromium chromium-driver
    apt_get_install chromium chromium-driver
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        die "/usr/bin/chromium or /usr/bin/chromedriver missing after apt-get install"
    fi
}

# --- 2b. NATS server with JetStream, for the tests of several coordinators on one queue ----------
setup_nats() {
    if command -v nats-server >/dev/null 2>&1; then
        say "nats-server: present ($(nats-server --version 2>&1))"
        return
    fi
    apt_update_once nats-server
    apt_get_install nats-server
    command -v nats-server >/dev/null 2>&1 || die "nats-server missing after apt-get install"
    # Debian starts a system service; the tests start their own servers on free ports.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now nats-server >/dev/null 2>&1 || true
    fi
}

# --- 3. npm tools in .tools: wasm-opt (binaryen@132) and playwright-core -------------------------
npm_pkg_version() {
    local f=$TOOLS_DIR/node_modules/$1/package.json
    [ -f "$f" ] && node -p "require(process.argv[1]).version" "$f" 2>/dev/null
}
setup_npm_tools() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    local want=() v
    v=$(npm_pkg_version binaryen || true)
    if [ "${v%%.*}" = "$BINARYEN_MAJOR" ] \
        && "$TOOLS_DIR/node_modules/.bin/wasm-opt" --version >/dev/null 2>&1; then
        say "wasm-opt (npm binaryen $v): present"
    else
        want+=("binaryen@$BINARYEN_MAJOR")
    fi
    v=$(npm_pkg_version playwright-core || true)
    if [ "$v" = "$PLAYWRIGHT_CORE_VERSION" ]; then
        say "playwright-core $v: present"
    else
        want+=("playwright-core@$PLAYWRIGHT_CORE_VERSION")
    fi
    v=$(npm_pkg_version @bjorn3/browser_wasi_shim || true)
    if [ "$v" = "$WASI_SHIM_VERSION" ]; then
        say "@bjorn3/browser_wasi_shim $v: present"
    else
        want+=("@bjorn3/browser_wasi_shim@$WASI_SHIM_VERSION")
    fi
    [ "${#want[@]}" -gt 0 ] || return 0

    mkdir -p "$TOOLS_DIR"
    [ -f "$TOOLS_DIR/package.json" ] \
        || printf '{\n  "name": "distchan-dev-tools",\n  "private": true\n}\n' >"$TOOLS_DIR/package.json"
    say "installing ${want[*]} into .tools with npm (timeout ${NPM_TIMEOUT} s)"
    local rc=0
    timeout "$NPM_TIMEOUT" npm install --prefix "$TOOLS_DIR" --save-exact --no-audit --no-fund \
        --no-update-notifier --loglevel=error --fetch-timeout=60000 --fetch-retries=2 \
        "${want[@]}" >"$WORK_TMP/npm.log" 2>&1 || rc=$?
    if [ "$rc" = 124 ]; then
        die "npm install ${want[*]} timed out after ${NPM_TIMEOUT} s (npm registry slow or unreachable); re-run, or set NPM_TIMEOUT higher"
    elif [ "$rc" != 0 ]; then
        tail -n 20 "$WORK_TMP/npm.log" >&2
        die "npm install ${want[*]} failed (exit $rc, log above)"
    fi
    v=$(npm_pkg_version binaryen || true)
    if [ "${v%%.*}" != "$BINARYEN_MAJOR" ] \
        || ! "$TOOLS_DIR/node_modules/.bin/wasm-opt" --version >/dev/null 2>&1; then
        die "wasm-opt from npm binaryen@$BINARYEN_MAJOR does not run"
    fi
    [ "$(npm_pkg_version playwright-core || true)" = "$PLAYWRIGHT_CORE_VERSION" ] \
        || die "playwright-core $PLAYWRIGHT_CORE_VERSION is not in .tools after npm install"
    [ "$(npm_pkg_version @bjorn3/browser_wasi_shim || true)" = "$WASI_SHIM_VERSION" ] \
        || die "@bjorn3/browser_wasi_shim $WASI_SHIM_VERSION is not in .tools after npm install"
    say "npm tools: ready"
}

# --- 4. wasm-bindgen-cli at the Cargo.lock version -----------------------------------------------
lock_wasm_bindgen_versions() {
    [ -f Cargo.lock ] || return 0
    awk '
        /^\[\[package\]\]/ { name = "" }
        /^name = /         { name = $3 }
        /^version = / && name == "\"wasm-bindgen\"" { v = $3; gsub(/"/, "", v); print v }
    ' Cargo.lock | sort -u
}
wasm_bindgen_version() {
    local vs
    if [ -n "${WASM_BINDGEN_VERSION:-}" ]; then
        vs=$(lock_wasm_bindgen_versions)
        if [ -n "$vs" ] && [ "$vs" != "$WASM_BINDGEN_VERSION" ]; then
            say "warning: WASM_BINDGEN_VERSION=$WASM_BINDGEN_VERSION but Cargo.lock has wasm-bindgen $vs" >&2
        fi
        echo "$WASM_BINDGEN_VERSION"
        return
    fi
    if [ ! -f Cargo.lock ]; then
        say "Cargo.lock missing: cargo generate-lockfile" >&2
        rustup run "$(base_toolchain)" cargo generate-lockfile >&2 \
            || die "cargo generate-lockfile failed in $REPO"
    fi
    vs=$(lock_wasm_bindgen_versions)
    if [ -z "$vs" ]; then
        say "Cargo.lock has no wasm-bindgen: cargo metadata (adds missing entries only)" >&2
        rustup run "$(base_toolchain)" cargo metadata --format-version 1 >/dev/null \
            || die "cargo metadata failed in $REPO"
        vs=$(lock_wasm_bindgen_versions)
    fi
    [ -n "$vs" ] || die "no wasm-bindgen package in $REPO/Cargo.lock (is worker-wasm a workspace member depending on wasm-bindgen?); set WASM_BINDGEN_VERSION to override"
    [ "$(printf '%s\n' "$vs" | wc -l)" = 1 ] \
        || die "several wasm-bindgen versions in Cargo.lock (${vs//$'\n'/ }); set WASM_BINDGEN_VERSION"
    echo "$vs"
}
tool_version_is() { # tool_version_is BIN VERSION: does `BIN --version` print "BIN VERSION..."?
    command -v "$1" >/dev/null 2>&1 || return 1
    local out
    out=$("$1" --version 2>/dev/null) || return 1
    case "$out" in "$1 $2"|"$1 $2 "*) return 0 ;; *) return 1 ;; esac
}
setup_wasm_bindgen() {
    local v
    v=$(wasm_bindgen_version)
    if tool_version_is wasm-bindgen "$v" && tool_version_is wasm-bindgen-test-runner "$v"; then
        say "wasm-bindgen-cli $v: present"
        return
    fi
    say "installing wasm-bindgen-cli $v with cargo install (about 2 min)"
    rustup run "$(base_toolchain)" cargo install --quiet --force wasm-bindgen-cli --version "=$v" \
        || die "cargo install wasm-bindgen-cli --version =$v failed"
    tool_version_is wasm-bindgen "$v" \
        || die "wasm-bindgen on PATH is not $v after install: $(command -v wasm-bindgen || echo none)"
}

# --- 5. wasm-pack --------------------------------------------------------------------------------
setup_wasm_pack() {
    if tool_version_is wasm-pack "$WASM_PACK_VERSION"; then
        say "wasm-pack $WASM_PACK_VERSION: present"
        return
    fi
    say "installing wasm-pack $WASM_PACK_VERSION with cargo install (about 2 min)"
    rustup run "$(base_toolchain)" cargo install --quiet --force wasm-pack --version "=$WASM_PACK_VERSION" \
        || die "cargo install wasm-pack --version =$WASM_PACK_VERSION failed"
    tool_version_is wasm-pack "$WASM_PACK_VERSION" \
        || die "wasm-pack on PATH is not $WASM_PACK_VERSION after install"
}

# --- 6. wasm32-wasip1, for the example task modules ----------------------------------------------
setup_wasip1() {
    local base
    base=$(base_toolchain)
    if rustup target list --installed --toolchain "$base" 2>/dev/null | grep -qx wasm32-wasip1; then
        say "wasm32-wasip1 target on $base: present"
        return
    fi
    say "wasm32-wasip1 target: installing with rustup on $base (timeout 60 s)"
    timeout 60 rustup target add --toolchain "$base" wasm32-wasip1 >/dev/null 2>&1 \
        || die "rustup target add wasm32-wasip1 failed or timed out: the example task modules cannot be built (rustup's download server must be reachable)"
}

setup_wasm_toolchain
setup_wasip1
if [ "${1:-}" = --build-only ]; then
    say "chromium: not needed to build (--build-only)"
else
    setup_chromium
    setup_nats
fi
setup_npm_tools
setup_wasm_bindgen
setup_wasm_pack

say "done in $((SECONDS - START_SECONDS)) s. Callers: source scripts/env.sh (PATH=$CARGO_BIN:$TOOLS_DIR/node_modules/.bin:\$PATH), then RUSTUP_TOOLCHAIN=$TC wasm-pack ..."
