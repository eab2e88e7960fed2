"""Which layer group's int8 rounding moves a float model's answers (developers only).

    python3 scripts/quantization_sensitivity.py RUN_FLOAT_DIR SCRATCH_DIR

RUN_FLOAT_DIR holds a float model.safetensors and its model.json (finish-run.sh's OUT/float).
Each variant rounds the convolution kernels of one layer group to int8 (per-output-channel
symmetric, as `trainer quantize`), keeps the rest in f32, and `trainer predict` (release build)
classifies the first 80 validation images of each class of ../shared/data/cxr-multisource/val;
the table counts answers that differ from the float model's and the mean change of each class's
probability. No labels are used. ONLY=float,all,layer2 picks variants. Needs numpy, safetensors.
"""
import hashlib, json, os, subprocess, sys, glob
import numpy as np
from safetensors.numpy import load_file, save_file
if len(sys.argv) != 3:
    sys.exit(__doc__)
run, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
tensors = load_file(f"{run}/model.safetensors")
card = json.load(open(f"{run}/model.json"))
val = "../shared/data/cxr-multisource/val"
images = []
for cls in ["Covid", "Normal", "Viral Pneumonia"]:
    images += sorted(glob.glob(f"{val}/{cls}/*"))[:80]
def qdq(w):
    w32 = w.astype(np.float32)
    flat = w32.reshape(w32.shape[0], -1)
    scale = np.abs(flat).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(flat / scale), -127, 127) * scale).reshape(w32.shape).astype(np.float32)
GROUPS = {"float": [], "all": ["conv1.", "layer1.", "layer2.", "layer3.", "layer4."],
          "stem": ["conv1."], "layer1": ["layer1."], "layer2": ["layer2."],
          "layer3": ["layer3."], "layer4": ["layer4."]}
def predict(name, prefixes):
    variant = {}
    for k, v in tensors.items():
        q = v.ndim == 4 and k.endswith(".weight") and any(k.startswith(p) for p in prefixes)
        variant[k] = qdq(v) if q else (v.astype(np.float32) if v.dtype == np.float16 else v)
    path = f"{out}/{name}.safetensors"
    save_file(variant, path)
    c = json.loads(json.dumps(card))
    c["weights"]["file"] = os.path.basename(path)
    c["weights"]["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    c["weights"]["bytes"] = os.path.getsize(path)
    c["weights"]["dtype"] = "f32"
    json.dump(c, open(f"{out}/{name}.json", "w"))
    res = subprocess.run(["target/release/trainer", "predict", "--json", "--weights", path,
                          "--card", f"{out}/{name}.json"] + images, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stderr)
    os.remove(path)
    return json.loads(res.stdout)
def probs(rows):
    names = ["Covid", "Normal", "Viral Pneumonia"]
    return np.array([[r["probabilities"][n] for n in names] for r in rows], dtype=np.float64)
groups = {k: v for k, v in GROUPS.items() if k in os.environ.get("ONLY", ",".join(GROUPS)).split(",")}
results = {name: predict(name, prefixes) for name, prefixes in groups.items()}
base = probs(results["float"])
print(f"{run}: {len(images)} validation images")
for name in groups:
    p = probs(results[name])
    flips = int((p.argmax(1) != base.argmax(1)).sum())
    shift = p.mean(0) - base.mean(0)
    print(f"{name:8s} answers changed {flips:3d}  mean |dp| {np.abs(p - base).mean():.4f}  mean shift per class {np.round(shift, 4).tolist()}")
