#!/usr/bin/env python3
"""Writes the PyTorch reference fixture that tests/tests/parity.rs checks the Rust ResNet50 and
preprocessing against.

Run by developers, not by CI (CI has no PyTorch). Needs torch + torchvision; on Debian:
    apt-get install python3-torch python3-torchvision libopenblas0-openmp
    /usr/bin/python3 -s scripts/make_parity_fixture.py

No 100 MB weights file is committed: the weights come from a formula (`formula_state_dict`) that
the Rust test computes too. The fixture holds the formula model's outputs in eval and training mode,
the running statistics after one training-mode forward, torchvision's key names and shapes, and
torchvision's preprocessing of 10 real radiographs from ../shared/data (subsampled every 4th pixel).
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity"
DATA = ROOT.parent / "shared" / "data" / "covid19-kaggle" / "test"
NUM_CLASSES = 3
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BATCH = 4  # formula images per forward (train-mode batch statistics)
GRADIENTS_CHECKED = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.2.bn3.bias", "fc.weight", "fc.bias"]
SUBSAMPLE = 4  # keep pixels [1::4, 1::4] of each 224x224 plane


def hash_uniform(t):
    """A pseudo-random value in [-1, 1) from t: 2 * frac(sin(t) * 43758.5453) - 1."""
    h = np.sin(t) * 43758.5453
    return 2.0 * (h - np.floor(h)) - 1.0


def formula_values(index, numel, name, shape):
    """The formula weights; mirrored by `formula_tensor` in tests/src/lib.rs."""
    base = hash_uniform(np.arange(numel, dtype=np.float64) * 0.61 + 0.37 * index)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "weight" and len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        v = base * math.sqrt(3.0) * math.sqrt(2.0 / fan_in)
    elif name == "fc.weight":
        v = base / math.sqrt(shape[1])
    elif leaf == "weight":
        v = 1.0 + 0.1 * base
    elif leaf == "running_var":
        v = 1.0 + 0.25 * (base + 1.0)
    else:  # bias, running_mean
        v = 0.1 * base
    return v.astype(np.float32).reshape(shape)


def formula_state_dict(model):
    keys = sorted(k for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    sd = {}
    for index, name in enumerate(keys):
        shape = list(model.state_dict()[name].shape)
        sd[name] = torch.from_numpy(formula_values(index, int(np.prod(shape)), name, shape))
    return sd


def formula_input(n):
    i = np.arange(n * 3 * 224 * 224, dtype=np.float64)
    return torch.from_numpy((2.0 * hash_uniform(0.0137 * i)).astype(np.float32).reshape(n, 3, 224, 224))


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name].detach().cpu().numpy().astype(np.float32))
        blob = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def torchvision_tensor_transform(path):
    """torchvision's eval transform on the float tensor path (antialiased bilinear)."""
    image = F.to_tensor(Image.open(path).convert("RGB"))
    image = F.resize(image, 256, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return F.normalize(F.center_crop(image, 224), MEAN, STD)


def torchvision_pil_transform(path):
    """The same transform as the seed paper's code runs it: on the PIL image (uint8 rounding)."""
    image = F.resize(Image.open(path).convert("RGB"), 256, interpolation=F.InterpolationMode.BILINEAR)
    return F.normalize(F.to_tensor(F.center_crop(image, 224)), MEAN, STD)


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    model = torchvision.models.resnet50(num_classes=NUM_CLASSES)
    torchvision_keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(formula_state_dict(model), strict=False)

    out = {}
    x = formula_input(BATCH)
    model.eval()
    with torch.no_grad():
        features = torch.flatten(model.avgpool(_backbone(model, x)), 1)
        out["eval.logits"] = model.fc(features)
        out["eval.features"] = features
    model.train()
    features = torch.flatten(model.avgpool(_backbone(model, x)), 1)
    logits = model.fc(features)
    out["train.logits"] = logits.detach().clone()
    out["train.features"] = features.detach().clone()
    labels = torch.arange(BATCH) % NUM_CLASSES
    torch.nn.functional.cross_entropy(logits, labels).backward()
    params = dict(model.named_parameters())
    for name in GRADIENTS_CHECKED:
        out["train.grad." + name] = params[name].grad.clone()
    for name, value in model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("running_var"):
            out["train.after." + name] = value.clone()

    files = sorted(p for p in DATA.rglob("*") if p.is_file())
    chosen = files[:: max(1, len(files) // 10)][:10]
    model.load_state_dict(formula_state_dict(model), strict=False)
    model.eval()
    pil_diffs = []
    for k, path in enumerate(chosen):
        reference = torchvision_tensor_transform(path)
        out[f"image{k}.preprocessed_sub4"] = reference[:, 1::SUBSAMPLE, 1::SUBSAMPLE]
        with torch.no_grad():
            out[f"image{k}.logits"] = model(reference.unsqueeze(0))[0]
        pil_diffs.append((torchvision_pil_transform(path) - reference).abs())
    write_safetensors(OUT / "reference.safetensors", out)
    meta = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "num_classes": NUM_CLASSES,
        "subsample": SUBSAMPLE,
        "batch": BATCH,
        "images": [str(p.relative_to(DATA.parent.parent)) for p in chosen],
        "torchvision_keys": torchvision_keys,
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    pil = torch.stack(pil_diffs)
    print(f"wrote {OUT}: {len(out)} tensors, {len(chosen)} images")
    print(f"PIL path vs tensor path (normalised units): mean {pil.mean():.5f}, max {pil.max():.5f}")


def _backbone(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


if __name__ == "__main__":
    sys.exit(main())
