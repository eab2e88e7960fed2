#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 180) on its seed corpus, without a sanitizer
# (safe Rust: what we look for is a panic, an abort, a hang or memory blow-up).
#   cargo install cargo-fuzz; rustup toolchain install nightly; bash fuzz/seeds.sh; bash fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-180}
for target in decode_image dicom safetensors model_card; do
  cargo +nightly fuzz run -s none -O "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=262144 -timeout=20 -print_final_stats=1 2>&1 |
    grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|panicked|ERROR|SUMMARY|Test unit written" || true
done
