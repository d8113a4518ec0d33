#!/usr/bin/env bash
# Runs every test of the project: installs what is missing (wasm target, wasm-bindgen-cli,
# wasm-pack, Chromium), then the workspace's cargo tests (unit, integration, doc tests),
# formatting and lint checks, the wasm worker's tests under Node and in headless Chromium,
# the browser end-to-end test. The browser tests run the debug binaries `cargo test` built
# (no release build here); the benchmark is separate: `cargo run --release -p distchan-bench`.
#
# Usage: scripts/test.sh            (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "setup (every step checks before it acts)"
bash scripts/setup.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --exclude distchan-worker-wasm --all-targets -- -D warnings
if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    cargo clippy -p distchan-worker-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings
else
    # The Debian fallback toolchain (see scripts/setup.sh) builds wasm but has no clippy.
    echo "note: no wasm32 target for $(rustup default | cut -d' ' -f1): wasm lints skipped"
fi

# Broken links in the API documentation fail too.
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --workspace --exclude distchan-worker-wasm

step "cargo test (workspace: unit, integration and doc tests)"
cargo test --workspace --exclude distchan-worker-wasm


step "wasm worker: Node, headless Chromium, end to end"
DISTCHAN_BIN_DIR=target/debug bash scripts/test-wasm.sh

echo
echo "all tests passed"
