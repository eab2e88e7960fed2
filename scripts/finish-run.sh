#!/usr/bin/env bash
# After `trainer train`, everything that makes a run a model we can ship, in one go:
#   1. calibrate: temperature, each class's operating point, the out-of-distribution gate;
#   2. evaluate the float model on the sets the card records (Kaggle 66 and 57, multi-source
#      test per source), so the int8 model can be compared with it;
#   3. quantize to int8 (per-channel scales) and evaluate again, recording into its card;
#   4. check the gate on unlike images (scripts/make_ood_set.py) and the CT slices;
#   5. measure how much the answers depend on framing (evaluate --zoom 0.8 and 1.25, recorded).
#
#   scripts/finish-run.sh RUN_DIR OUT_DIR [DATA_ROOT]
#
# RUN_DIR holds train's model.safetensors / model.json (left as they are); OUT_DIR gets float/
# (the calibrated float model) and the int8 model with its reports (test-66, test-57,
# test-multisource, gate-check.txt, logs). DATA_ROOT defaults to ../shared/data. TRAINER (default
# target/release/trainer) and DEVICE (default auto) choose the binary and the device; OOD_DIR a
# prepared unlike-image set (default: written here with scripts/make_ood_set.py, which needs
# pillow and scikit-image; without them only the CT slices are checked).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: finish-run.sh RUN_DIR OUT_DIR [DATA_ROOT]}
out=${2:?usage: finish-run.sh RUN_DIR OUT_DIR [DATA_ROOT]}
data=${3:-../shared/data}
t=${TRAINER:-target/release/trainer}
device=${DEVICE:-auto}
kaggle=$data/covid19-kaggle
cxr=$data/cxr-multisource
float=$out/float
mkdir -p "$float"
cp "$run/model.safetensors" "$run/model.json" "$float/"
for f in metrics.csv curves.png; do [ -f "$run/$f" ] && cp "$run/$f" "$out/"; done

# The run's data, wherever the card says it was (calibrate checks its content hash).
mapfile -t train_data < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); d=c["training"]["config"]["data"]; print("\n".join(d if isinstance(d, list) else [d]))' "$run/model.json")
data_flags=()
for d in "${train_data[@]}"; do
  name=$(basename "$(dirname "$d")")/$(basename "$d")
  data_flags+=(--data "$data/$name")
done
$t calibrate --device "$device" --weights "$float/model.safetensors" --card "$float/model.json" \
  "${data_flags[@]}" | tee "$out/calibrate.log"

evaluate() { # DIR NAME SET REPORT [extra flags]
  local dir=$1 name=$2 set=$3 report=$4; shift 4
  $t evaluate --device "$device" --weights "$dir/model.safetensors" --card "$dir/model.json" \
    --data "$set" --out "$dir/$report" --record "$name" "$@" > "$dir/$report.log"
  grep -E "^ *accuracy|flagged|operating point" "$dir/$report.log" | sed "s|^|$report: |"
}
evaluate_all() { # DIR
  evaluate "$1" "covid19-kaggle test (66 images, comparable with the paper)" "$kaggle/test" test-66
  evaluate "$1" "covid19-kaggle test without the 9 leaked images (57, honest)" "$kaggle/test" test-57 \
    --exclude "$kaggle/test-leaks.txt"
  evaluate "$1" "cxr-multisource test, three paper classes (848)" "$cxr/test" test-multisource
}
echo "== float model"
evaluate_all "$float"
$t quantize --weights "$float/model.safetensors" --card "$float/model.json" --out "$out"
echo "== int8 model"
evaluate_all "$out"

ood=${OOD_DIR:-$out/ood}
if [ -z "${OOD_DIR:-}" ]; then
  rm -rf "$ood"
  if python3 -c 'import skimage, PIL' 2>/dev/null; then
    python3 scripts/make_ood_set.py --test "$kaggle/test" --out "$ood" --ct "$data/not-chest-xray/ct-slices"
  else
    mkdir -p "$ood/ct" && cp "$data"/not-chest-xray/ct-slices/* "$ood/ct/"
    echo '{"ct": "chest CT slices (axial), not radiographs"}' > "$ood/kinds.json"
  fi
fi
$t check-gate --device "$device" --weights "$out/model.safetensors" --card "$out/model.json" \
  --data "$ood" --record | tee "$out/gate-check.txt"
[ -n "${OOD_DIR:-}" ] || rm -rf "$ood"

# 5. How much the answers depend on framing: the multi-source test with every radiograph shown
#    smaller in a black margin (0.8) and its centre enlarged (1.25), per source, recorded in the
#    card as framing checks (the page's card panel shows them beside the results as they are).
for zoom in 0.8 1.25; do
  $t evaluate --device "$device" --weights "$out/model.safetensors" --card "$out/model.json" \
    --data "$cxr/test" --zoom "$zoom" --record "cxr-multisource test, framing check at zoom $zoom" \
    > "$out/framing-$zoom.txt"
  grep -E "^ *accuracy" "$out/framing-$zoom.txt" | head -1 | sed "s|^|zoom $zoom: |"
done
