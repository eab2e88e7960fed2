#!/usr/bin/env bash
# The project's test command (README, CI): installs what a fresh machine lacks, then runs the
# format check, clippy with warnings denied (native, and wasm32 for the shared crate and the page),
# every Rust test, and the browser test of the built page (scripts/test-browser.sh), whose trunk
# build compiles the shared crate and the page to wasm32.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fc-list >/dev/null || need_apt+=(fontconfig)
dpkg -s libfontconfig1-dev >/dev/null 2>&1 || need_apt+=(libfontconfig1-dev)
dpkg -s libfreetype-dev >/dev/null 2>&1 || need_apt+=(libfreetype-dev)
ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== clippy, wasm32 (the shared crate, the page and its worker)"
cargo clippy -p pneumoscope -p webapp --target wasm32-unknown-unknown --all-targets -- -D warnings
echo "== clippy, wasm32 with relaxed SIMD (the worker build browsers with it run)"
cargo clippy -p pneumoscope -p webapp --target wasm32-unknown-unknown --all-targets \
  --features webapp/relaxed-simd -- -D warnings
echo "== tests"
cargo test --workspace
echo "== the page in headless Chromium"
bash scripts/test-browser.sh weights
