#!/usr/bin/env bash
# Seed corpora from real files: the DICOM fixtures, small real radiographs (PNG and JPEG), the
# shipped model card and small safetensors files. Written to fuzz/corpus/<target> (not committed).
set -euo pipefail
cd "$(dirname "$0")"
DATA=../../shared/data/covid19-kaggle/test
rm -rf corpus && mkdir -p corpus/{decode_image,dicom,safetensors,model_card}
cp ../tests/fixtures/dicom/*.dcm corpus/dicom/
cp ../tests/fixtures/dicom/*.dcm ../tests/fixtures/dicom/source.png corpus/decode_image/
# A few real radiographs, shrunk so mutations reach past the header in reasonable time.
python3 - "$DATA" <<'PY'
import sys, pathlib
from PIL import Image
files = sorted(pathlib.Path(sys.argv[1]).rglob("*.*"))[:6]
for i, f in enumerate(files):
    im = Image.open(f)
    im.thumbnail((48, 48))
    im.convert("L").save(f"corpus/decode_image/real-{i}.png")
    im.convert("RGB").save(f"corpus/decode_image/real-{i}.jpg", quality=80)
    im.convert("L").save(f"corpus/decode_image/real-{i}-progressive.jpg", quality=60, progressive=True)
# safetensors: a header of JSON, then the tensors' bytes.
import json, struct
def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
pathlib.Path("corpus/safetensors/small.safetensors").write_bytes(safetensors({
    "fc.weight": ("F32", [3, 4], bytes(48)), "fc.bias": ("F16", [3], bytes(6)),
    "bn1.running_var": ("BF16", [2], bytes(4))}))
pathlib.Path("corpus/safetensors/empty.safetensors").write_bytes(safetensors({}))
# int8 kernels with their per-channel scales (trainer quantize), and one without its scale.
pathlib.Path("corpus/safetensors/int8.safetensors").write_bytes(safetensors({
    "conv1.weight": ("I8", [2, 1, 2, 2], bytes([1, 255, 3, 128, 0, 7, 9, 200])),
    "conv1.weight_scale": ("F32", [2], struct.pack("<2f", 0.01, 0.5)),
    "bn1.weight": ("F16", [2], bytes(4))}))
pathlib.Path("corpus/safetensors/int8-no-scale.safetensors").write_bytes(safetensors({
    "conv1.weight": ("I8", [1, 1, 1, 1], bytes([5]))}))
PY
cp ../weights/model.json corpus/model_card/shipped.json
cp ../docs/runs/2026-11-28-multisource-96/model.json corpus/model_card/candidate.json
ls corpus/* | head -50
