#!/usr/bin/env bash
# Installs what building the page needs on a fresh Debian machine, at the versions the project
# pins: the wasm32 target, trunk 0.21 (0.22 needs a newer rustc), wasm-bindgen-cli at exactly
# Cargo.lock's wasm-bindgen version, and Debian's binaryen (wasm-opt 108, pinned in Trunk.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  # Without --locked: the crate's own lock file pins a yanked dependency.
  cargo install wasm-bindgen-cli --version "=$bindgen_version"
fi
grep -q "wasm_bindgen = \"$bindgen_version\"" Trunk.toml || {
  echo "Trunk.toml's [tools] wasm_bindgen differs from Cargo.lock's $bindgen_version" >&2
  exit 1
}
trunk --version 2>/dev/null | grep -q '^trunk 0\.21\.' || cargo install trunk --version '^0.21' --locked
if ! wasm-opt --version 2>/dev/null | grep -q 'version 108'; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen
fi
