#!/usr/bin/env python3
"""Builds an out-of-distribution image set for the gate's evaluation, from material available
offline: the test radiographs inverted, rotated by 90 degrees and cropped to a corner; natural
photographs shipped with scikit-image; synthetic images (noise, gradients, checkerboards).

    python3 -m pip install scikit-image pillow
    python3 scripts/make_ood_set.py --test ../shared/data/covid19-kaggle/test --out /tmp/ood \
        --ct ../shared/data/not-chest-xray/ct-slices

writes OUT/<kind>/*.png and OUT/kinds.json (what each kind is, in words; `trainer check-gate
--record` keeps them in the card for the page). `--natural-only --max-side 160` writes the small copies of the natural
photographs kept as test fixtures (tests/fixtures/ood/natural). Then `trainer predict --json ... OUT/<kind>/*` gives, per image,
`in_distribution`; the share flagged is the gate's rejection rate for that kind.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


KINDS = {
    "inverted": "test radiographs inverted (a negative)",
    "rotated90": "test radiographs rotated by 90 degrees",
    "corner_crop": "the top-left quarter of test radiographs",
    "natural": "photographs and scientific images (scikit-image samples)",
    "synthetic": "synthetic images: noise, gradients, checkerboard, blank",
    "ct": "chest CT slices (axial), not radiographs",
}


def radiograph_variants(test_dir, out):
    files = sorted(p for p in Path(test_dir).rglob("*") if p.is_file())
    for kind in ("inverted", "rotated90", "corner_crop"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        image = Image.open(path).convert("L")
        ImageOps.invert(image).save(out / "inverted" / f"{i:03d}.png")
        image.rotate(90, expand=True).save(out / "rotated90" / f"{i:03d}.png")
        w, h = image.size
        image.crop((0, 0, w // 4, h // 4)).save(out / "corner_crop" / f"{i:03d}.png")
    return len(files)


def natural_images(out, max_side=None):
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon",
             "page", "text", "clock", "horse", "hubble_deep_field", "immunohistochemistry",
             "retina", "shepp_logan_phantom"]
    (out / "natural").mkdir(parents=True, exist_ok=True)
    count = 0
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        array = np.asarray(loader())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype.kind == "f":  # e.g. the Shepp-Logan phantom, in [0, 1]
            array = np.clip(array * 255, 0, 255)
        image = Image.fromarray(array.astype(np.uint8))
        if max_side:
            image.thumbnail((max_side, max_side), Image.LANCZOS)
        image.save(out / "natural" / f"{name}.png", optimize=True)
        count += 1
    return count


def synthetic_images(out, seed=0):
    rng = np.random.default_rng(seed)
    (out / "synthetic").mkdir(parents=True, exist_ok=True)
    size = 512
    y, x = np.mgrid[0:size, 0:size]
    images = {
        "uniform_noise": rng.integers(0, 256, (size, size, 3)),
        "gray_noise": np.repeat(rng.integers(0, 256, (size, size, 1)), 3, axis=2),
        "horizontal_gradient": np.repeat((x * 255 / size)[..., None], 3, axis=2),
        "radial_gradient": np.repeat((255 * np.hypot(x - size / 2, y - size / 2) / (size / 1.4))[..., None], 3, axis=2),
        "checkerboard": np.repeat((((x // 32 + y // 32) % 2) * 255)[..., None], 3, axis=2),
        "black": np.zeros((size, size, 3)),
        "white": np.full((size, size, 3), 255),
        "color_bars": np.stack([(x * 255 // size), (y * 255 // size), 255 - (x * 255 // size)], axis=2),
    }
    for name, array in images.items():
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(out / "synthetic" / f"{name}.png")
    return len(images)


def ct_slices(ct_dir, out):
    """Copies the CT slices as they are (their own encoding is part of what the gate sees)."""
    files = sorted(p for p in Path(ct_dir).iterdir() if p.is_file())
    (out / "ct").mkdir(parents=True, exist_ok=True)
    for path in files:
        (out / "ct" / path.name).write_bytes(path.read_bytes())
    return len(files)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ct", help="folder of chest CT slices (kind `ct`), e.g. "
                        "../shared/data/not-chest-xray/ct-slices")
    parser.add_argument("--natural-only", action="store_true")
    parser.add_argument("--max-side", type=int, help="shrink natural photographs to this side")
    args = parser.parse_args()
    out = Path(args.out)
    if args.natural_only:
        print({"natural": natural_images(out, args.max_side)})
        return
    if not args.test:
        parser.error("--test is required unless --natural-only")
    counts = {
        "radiographs per variant": radiograph_variants(args.test, out),
        "natural": natural_images(out, args.max_side),
        "synthetic": synthetic_images(out),
    }
    kinds = dict(KINDS)
    if args.ct:
        counts["ct"] = ct_slices(args.ct, out)
    else:
        del kinds["ct"]
    (out / "kinds.json").write_text(json.dumps(kinds, indent=2) + "\n")
    print(counts)


if __name__ == "__main__":
    main()
