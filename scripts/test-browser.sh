#!/usr/bin/env bash
# The browser proof: builds the page with a model, classifies real radiographs in headless
# Debian Chromium and compares with `trainer predict --json` on the same files and weights.
#   scripts/test-browser.sh [MODEL_DIR]   default: a random-weight model written for the test
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=target/browser
mkdir -p "$work"

command -v chromium >/dev/null && command -v chromedriver >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
}
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund)
bash scripts/setup-web.sh

# The random-weight model (with a gate) and the images unlike radiographs it writes beside it.
cargo run --quiet -p pneumoscope-tests --bin write-test-model -- "$work/model"
model_dir=${1:-$work/model}
bash scripts/build-web.sh "$model_dir" "$work/dist"

data=$root/../shared/data/covid19-kaggle/test
images=(
  "$data/Covid/0100.jpeg" "$data/Covid/0105.png"
  "$data/Normal/0101.jpeg" "$data/Normal/0102.jpeg"
  "$data/Viral Pneumonia/0101.jpeg" "$data/Viral Pneumonia/0103.jpeg"
  "$root/$work/model/unlike/inverted.png" "$root/$work/model/unlike/pattern.png"
)
dicom=("$root/tests/fixtures/dicom/mono1-12bit.dcm" "$root/tests/fixtures/dicom/mono2-12bit-jpeg-lossless.dcm")
for image in "${images[@]}" "${dicom[@]}"; do [ -f "$image" ] || { echo "missing test image $image" >&2; exit 1; }; done
# The dev profile (dependencies and the model's kernels at opt-level 3): `cargo test` has built it.
cargo run --quiet -p trainer -- predict --weights "$work/dist/model.safetensors" --card "$work/dist/model.json" \
  --json "${images[@]}" "${dicom[@]}" > "$work/expected.json"

joined=$(IFS=:; echo "${images[*]}")
joined_dicom=$(IFS=:; echo "${dicom[*]}")
cd tests/browser
DIST=$root/$work/dist EXPECTED=$root/$work/expected.json IMAGES="$joined" DICOM="$joined_dicom" \
  ARTIFACTS=$root/$work/artifacts node --test --test-concurrency=1 page.test.mjs
