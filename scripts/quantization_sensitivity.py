"""Which layer group's int8 rounding moves a float model's answers (developers only).

    python3 scripts/quantization_sensitivity.py RUN_FLOAT_DIR SCRATCH_DIR

RUN_FLOAT_DIR holds a float model.safetensors and its model.json (finish-run.sh's OUT/float).
`trainer quantize` (release build) writes the int8 model once; each variant takes one layer
group's convolution kernels from it (dequantized), keeps the rest in f32, and `trainer predict`
classifies the first 80 validation images of each class of ../shared/data/cxr-multisource/val;
the table counts answers that differ from the float model's and the mean change of each class's
probability. No labels are used. ONLY=float,all,layer2 picks variants. Needs numpy, safetensors.
"""
import copy, hashlib, json, os, subprocess, sys, glob
import numpy as np
from safetensors.numpy import load_file, save_file
if len(sys.argv) != 3:
    sys.exit(__doc__)
run, out = sys.argv[1], sys.argv[2]
TRAINER = "target/release/trainer"
os.makedirs(out, exist_ok=True)
def trainer(*args):
    res = subprocess.run([TRAINER, *args], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stderr)
    return res.stdout
tensors = load_file(f"{run}/model.safetensors")
card = json.load(open(f"{run}/model.json"))
classes = card["classes"]
# The int8 model exactly as it would ship; its kernels are read back as f32.
trainer("quantize", "--weights", f"{run}/model.safetensors", "--card", f"{run}/model.json",
        "--out", f"{out}/int8")
int8 = load_file(f"{out}/int8/model.safetensors")
def dequantized(name):
    return int8[name].astype(np.float32) * int8[name + "_scale"].reshape(-1, 1, 1, 1)
val = "../shared/data/cxr-multisource/val"
images = []
for cls in classes:
    images += sorted(glob.glob(f"{val}/{cls}/*"))[:80]
GROUPS = {"float": [], "all": ["conv1.", "layer1.", "layer2.", "layer3.", "layer4."],
          "stem": ["conv1."], "layer1": ["layer1."], "layer2": ["layer2."],
          "layer3": ["layer3."], "layer4": ["layer4."]}
def predict(name, prefixes):
    variant = {}
    for k, v in tensors.items():
        q = k + "_scale" in int8 and any(k.startswith(p) for p in prefixes)
        variant[k] = dequantized(k) if q else (v.astype(np.float32) if v.dtype == np.float16 else v)
    path = f"{out}/{name}.safetensors"
    save_file(variant, path)
    c = copy.deepcopy(card)
    c["weights"]["file"] = os.path.basename(path)
    c["weights"]["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    c["weights"]["bytes"] = os.path.getsize(path)
    c["weights"]["dtype"] = "f32"
    json.dump(c, open(f"{out}/{name}.json", "w"))
    answers = trainer("predict", "--json", "--weights", path, "--card", f"{out}/{name}.json", *images)
    os.remove(path)
    return json.loads(answers)
def probs(rows):
    return np.array([[r["probabilities"][n] for n in classes] for r in rows], dtype=np.float64)
groups = {k: v for k, v in GROUPS.items() if k in os.environ.get("ONLY", ",".join(GROUPS)).split(",")}
results = {name: predict(name, prefixes) for name, prefixes in groups.items()}
base = probs(results["float"])
print(f"{run}: {len(images)} validation images")
for name in groups:
    p = probs(results[name])
    flips = int((p.argmax(1) != base.argmax(1)).sum())
    shift = p.mean(0) - base.mean(0)
    print(f"{name:8s} answers changed {flips:3d}  mean |dp| {np.abs(p - base).mean():.4f}  mean shift per class {np.round(shift, 4).tolist()}")
