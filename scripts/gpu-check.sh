#!/usr/bin/env bash
# Issue 3's GPU check, on a machine with an NVIDIA GPU, PyTorch and no Rust, from the repository
# root. Prepare it on the build machine:
#
#   bash scripts/build-cuda.sh target/gpu-carry                 # target/gpu-carry/trainer.zst
#   cp -r ../shared/data/covid19-kaggle target/gpu-carry/data   # the radiographs (18 MB)
#
# then, on the GPU box (carrying target/gpu-carry):
#
#   bash scripts/gpu-check.sh target/gpu-carry [RESULTS_DIR]
#
# It trains the shipped model's recipe with our CUDA trainer, then the same recipe with PyTorch
# (scripts/train_reference.py) on the same GPU, and writes both logs and summary.txt (images/s of
# each, their ratio, best validation and test accuracies) to RESULTS_DIR (default $OUT, else
# gpu-results).
set -euo pipefail
cd "$(dirname "$0")/.."
carry=${1:?usage: gpu-check.sh CARRY_DIR [RESULTS_DIR]}
results=${2:-${OUT:-gpu-results}}
mkdir -p "$results"
data=$carry/data
# The recipe of weights/model.json (docs/runs/2026-11-27-scratch-112): from scratch at 112x112.
recipe=(--resize 128 --crop 112 --lr 0.01 --weight-decay 5e-4 --zero-init-residual --warmup-epochs 2
  --epochs 30 --lr-step 20 --seed 42)

# libcuda is the driver's; the CUDA 13 runtime libraries (cuBLAS, cuRAND, NVRTC, cudart) come
# with PyTorch's nvidia-* wheels, under site-packages/nvidia/*/lib.
torch_libs=$(python3 -c 'import glob, os, nvidia; print(":".join(d for p in nvidia.__path__ for d in sorted(glob.glob(os.path.join(p, "*", "lib")))))')
export LD_LIBRARY_PATH="$torch_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
zstd -q -d -f "$carry/trainer.zst" -o /tmp/trainer && chmod +x /tmp/trainer
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$results/gpu.txt"

echo "== our trainer, CUDA"
/tmp/trainer train --data "$data/train" --out /tmp/run-candle --device cuda --f16 "${recipe[@]}" \
  2>&1 | tr '\r' '\n' | grep -v '^ *epoch.*\[' | tee "$results/candle.log"
for set in 66 57; do
  exclude=()
  [ "$set" = 57 ] && exclude=(--exclude "$data/test-leaks.txt")
  /tmp/trainer evaluate --device cuda --weights /tmp/run-candle/model.safetensors \
    --card /tmp/run-candle/model.json --data "$data/test" "${exclude[@]}" --json \
    > "$results/candle-test-$set.json"
done

echo "== PyTorch, same recipe, same GPU"
python3 scripts/train_reference.py --data "$data/train" --test "$data/test" \
  --exclude "$data/test-leaks.txt" --out /tmp/run-torch --device cuda --workers 8 "${recipe[@]}" \
  2>&1 | tee "$results/torch.log"
cp /tmp/run-torch/summary.json "$results/torch-summary.json"

python3 - "$results" <<'EOF'
import csv, json, sys
from pathlib import Path
results = Path(sys.argv[1])
rows = list(csv.DictReader(open("/tmp/run-candle/metrics.csv")))
candle_rate = sum(float(r["images_per_second"]) for r in rows) / len(rows)
candle_best = max(float(r["validation_accuracy"]) for r in rows)
torch = json.load(open(results / "torch-summary.json"))
acc = {s: json.load(open(results / f"candle-test-{s}.json"))["accuracy"] for s in (66, 57)}
lines = [
    f"GPU: {(results / 'gpu.txt').read_text().strip()}",
    f"training images/s (mean over epochs): candle {candle_rate:.1f}, PyTorch {torch['mean_train_images_per_second']:.1f}, "
    f"ratio candle/PyTorch {candle_rate / torch['mean_train_images_per_second']:.2f}",
    f"best validation accuracy: candle {candle_best:.4f}, PyTorch {torch['best_validation_accuracy']:.4f}",
    f"test accuracy (66 / 57 without leaks): candle {acc[66]:.4f} / {acc[57]:.4f}, "
    f"PyTorch {torch.get('test_accuracy', float('nan')):.4f} / {torch.get('test_accuracy_without_excluded', float('nan')):.4f}",
]
(results / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
