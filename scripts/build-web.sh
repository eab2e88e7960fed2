#!/usr/bin/env bash
# Builds the page into a self-contained static folder: trunk (offline) for the page and its
# worker, then the model and its card beside them.
#   scripts/build-web.sh [MODEL_DIR [DIST]]   defaults: weights/, dist/
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:-weights}
dist=${2:-dist}

TRUNK_OFFLINE=true trunk build --offline --release --dist "$dist"
if [ -f "$model_dir/model.safetensors" ] && [ -f "$model_dir/model.json" ]; then
  cp "$model_dir/model.safetensors" "$model_dir/model.json" "$dist/"
  echo "built $dist/ with the model from $model_dir/"
else
  # The page then says plainly that it has no model; it never falls back to a stand-in.
  echo "warning: no model in $model_dir/ (model.safetensors + model.json): $dist/ has none." \
    "Train one (trainer train --out DIR) and pass DIR." >&2
fi
