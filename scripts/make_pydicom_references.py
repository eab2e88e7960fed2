#!/usr/bin/env python3
"""Copies a few of pydicom's public test files into tests/fixtures/dicom/pydicom and writes, for
each, what pydicom itself makes of it: the first frame after pydicom's Modality LUT and VOI LUT /
windowing (`pydicom.pixels.apply_modality_lut`, `apply_voi_lut`), scaled to [0, 1] over the
output range pydicom windows into, else min-max of the stored values; colour as pydicom converts it
to RGB. Grey references are 16-bit PNGs, colour 8-bit. The tests ask that our decoder agrees.

These files were written by other tools (DCMTK, GDCM, scanners via NEMA's WG04 sets), so they
check our reader against files we did not make. Licence: pydicom is MIT; its test files'
README says "I believe there is no restriction on using any of these files in this manner"
(pydicom 3.0.2, pydicom/data/test_files/README.txt); copied with that README's provenance.

Developers only (the fixtures are committed): python3 -m pip install pydicom==3.0.2 pillow numpy
    python3 scripts/make_pydicom_references.py
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

# name: what it checks (the README in the fixture folder lists these)
READABLE = {
    "CT_small": "CT, explicit VR LE, signed 16-bit, rescale, no window (min-max)",
    "MR_small": "MR, explicit VR LE, signed 16-bit, window",
    "MR_small_implicit": "the same, implicit VR LE",
    "MR_small_bigendian": "the same, explicit VR big endian",
    "MR_small_RLE": "the same, RLE lossless",
    "MR_small_jp2klossless": "the same, JPEG 2000 lossless (native only)",
    "image_dfl": "deflated explicit VR LE, 8-bit, no window",
    "693_J2KI": "JPEG 2000 lossy, 14 bits stored, rescale and window (native only)",
    "SC_rgb_rle": "RGB secondary capture, RLE",
    "SC_rgb_rle_2frame": "RGB, RLE, two frames (first used)",
    "SC_rgb_jpeg_dcmtk": "YBR_FULL JPEG baseline (DCMTK)",
}
REFUSED = {
    "JPEG-lossy": "12-bit lossy JPEG (refused by name)",
    "MR_small_jpeg_ls_lossless": "JPEG-LS (refused by name)",
    "MR_truncated": "truncated pixel data",
    "rtplan": "an RT plan: no image",
}


def reference(ds: pydicom.Dataset) -> Image.Image:
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1)) > 1:
        pixels = pixels[0]
    if ds.SamplesPerPixel == 3:
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0)
        # The range pydicom windows into (processing.apply_windowing).
        if ds.PixelRepresentation == 0:
            low, high = 0.0, 2.0**ds.BitsStored - 1
        else:
            low, high = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            low, high = low * slope + intercept, high * slope + intercept
    else:
        low, high = values.min(), values.max()
    grey = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        grey = 1.0 - grey
    return Image.fromarray(np.round(grey * 65535).astype(np.uint16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/dicom/pydicom", type=Path)
    args = parser.parse_args()
    source = Path(pydicom.__file__).parent / "data" / "test_files"
    args.out.mkdir(parents=True, exist_ok=True)
    for name in {**READABLE, **REFUSED}:
        shutil.copyfile(source / f"{name}.dcm", args.out / f"{name}.dcm")
    for name in READABLE:
        ds = pydicom.dcmread(source / f"{name}.dcm")
        reference(ds).save(args.out / f"{name}.png")
    lines = [
        "# pydicom's public test files",
        "",
        f"Copied from pydicom {pydicom.__version__} (`pydicom/data/test_files/`, MIT licence; its README:",
        '"I believe there is no restriction on using any of these files in this manner"), with',
        "`<name>.png`: what pydicom makes of the first frame (Modality LUT, first VOI LUT or window,",
        "else min-max; 16-bit grey or 8-bit RGB). Written by `scripts/make_pydicom_references.py`.",
        "",
        "| file | what it checks |",
        "|---|---|",
        *[f"| `{n}.dcm` | {w} |" for n, w in {**READABLE, **REFUSED}.items()],
        "",
    ]
    (args.out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
