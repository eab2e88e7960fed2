#!/usr/bin/env python3
"""Writes the DICOM test files in tests/fixtures/dicom from one real test radiograph.

Every encoding holds the same picture, so the tests can ask that they all classify alike:
MONOCHROME1 and MONOCHROME2, 8, 12 and 16 bits, signed with a rescale, with and without a window,
each compressed transfer syntax we claim, a colour secondary capture, two frames, and broken files
that must be refused with a clear error.

Developers only (the fixtures are committed): python3 -m pip install pydicom imagecodecs pillow numpy
    python3 scripts/make_dicom_fixtures.py --source ../shared/data/cxr-multisource/test/Normal/<file>
"""

import argparse
import io
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def dataset(pixels: np.ndarray, photometric: str, bits_stored: int, signed: bool, sop_class: str) -> Dataset:
    """A minimal, anonymous image dataset around `pixels` (rows, columns[, 3])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if pixels.ndim == 2 else "OT"
    # Test data: a placeholder patient, to prove the page never shows these.
    ds.PatientName = "TEST^NOT-SHOWN"
    ds.PatientID = "ID-NOT-SHOWN-0001"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, path: Path, syntax=ExplicitVRLittleEndian, preamble=True) -> None:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, little_endian=True,
               implicit_vr=syntax == ImplicitVRLittleEndian)
    data = buffer.getvalue()
    if not preamble:
        data = data[128:]  # starts with "DICM"
    path.write_bytes(data)
    print(f"{path.name}: {len(data)} bytes")


def encapsulated(ds: Dataset, frames: list[bytes], syntax) -> Dataset:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path, help="a test radiograph (PNG/JPEG)")
    parser.add_argument("--out", default=Path("tests/fixtures/dicom"), type=Path)
    parser.add_argument("--side", default=160, type=int, help="longest side of the fixtures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    image = Image.open(args.source).convert("L")
    image.thumbnail((args.side, args.side), Image.LANCZOS)
    grey = np.asarray(image, dtype=np.uint8)
    image.save(args.out / "source.png")
    print(f"source.png: {grey.shape[1]}x{grey.shape[0]} from {args.source.name}")
    g16 = grey.astype(np.uint16)

    # 12 bits in 16, MONOCHROME2, window over the whole range.
    twelve = g16 * 16 + 8
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    save(ds, args.out / "mono2-12bit.dcm")
    save(ds, args.out / "mono2-12bit-no-preamble.dcm", preamble=False)
    save(ds, args.out / "mono2-12bit-implicit.dcm", syntax=ImplicitVRLittleEndian)
    save(ds, args.out / "mono2-12bit-deflated.dcm", syntax=DeflatedExplicitVRLittleEndian)
    rle = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    rle.WindowCenter, rle.WindowWidth = 2048, 4096
    rle.compress(RLELossless, encoding_plugin="pydicom")
    save(rle, args.out / "mono2-12bit-rle.dcm", syntax=RLELossless)

    # The same picture stored inverted: MONOCHROME1 must come out identical.
    inverted = (255 - g16) * 16 + 8
    ds = dataset(inverted, "MONOCHROME1", 12, False, DX_STORAGE)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    save(ds, args.out / "mono1-12bit.dcm")

    # 16 bits signed with a rescale: value = stored * 0.5 + 1000; window over the values.
    signed = (grey.astype(np.int32) * 256 - 32768).astype(np.int16)
    ds = dataset(signed, "MONOCHROME2", 16, True, DX_STORAGE)
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "1000"
    ds.WindowCenter, ds.WindowWidth = 1000, 32768
    save(ds, args.out / "mono2-16bit-signed-rescale.dcm")

    # 8 bits, no window: the stored range becomes black to white.
    ds = dataset(grey, "MONOCHROME2", 8, False, DX_STORAGE)
    save(ds, args.out / "mono2-8bit-no-window.dcm")

    # VOI LUT table instead of a window: the identity over the 12-bit range, 16-bit entries.
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [int(v) for v in (np.arange(4096) * 16)]
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    save(ds, args.out / "mono2-12bit-voi-lut.dcm")

    # Compressed: JPEG baseline (8 bit), extended (12 bit), lossless (SV1), JPEG-LS, JPEG 2000.
    ds = dataset(grey, "MONOCHROME2", 8, False, DX_STORAGE)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=95)
    save(encapsulated(ds, [buffer.getvalue()], JPEGBaseline8Bit), args.out / "mono2-jpeg-baseline.dcm",
         syntax=JPEGBaseline8Bit)
    ds = dataset(grey, "MONOCHROME2", 8, False, DX_STORAGE)
    frame = imagecodecs.jpeg8_encode(grey, level=95)
    save(encapsulated(ds, [frame], JPEGExtended12Bit), args.out / "mono2-jpeg-extended-8bit.dcm",
         syntax=JPEGExtended12Bit)
    # 12-bit lossy JPEG: refused by name (no pure-Rust decoder reads it).
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    frame = imagecodecs.jpeg8_encode(twelve, level=95, bitspersample=12)
    save(encapsulated(ds, [frame], JPEGExtended12Bit), args.out / "mono2-12bit-jpeg-extended.dcm",
         syntax=JPEGExtended12Bit)
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    frame = imagecodecs.ljpeg_encode(twelve, bitspersample=12)
    save(encapsulated(ds, [frame], JPEGLosslessSV1), args.out / "mono2-12bit-jpeg-lossless.dcm",
         syntax=JPEGLosslessSV1)
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    frame = imagecodecs.jpegls_encode(twelve)
    save(encapsulated(ds, [frame], JPEGLSLossless), args.out / "mono2-12bit-jpeg-ls.dcm",
         syntax=JPEGLSLossless)
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    frame = imagecodecs.jpeg2k_encode(twelve, level=0, codecformat="J2K")
    save(encapsulated(ds, [frame], JPEG2000Lossless), args.out / "mono2-12bit-jpeg2000.dcm",
         syntax=JPEG2000Lossless)

    # An RGB secondary capture of the radiograph.
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    ds = dataset(rgb, "RGB", 8, False, SecondaryCaptureImageStorage)
    save(ds, args.out / "rgb-secondary-capture.dcm")

    # Two frames: the first is the radiograph, the second its negative (must not be read).
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.PixelData = np.stack([twelve, inverted]).tobytes()
    ds.NumberOfFrames = 2
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    save(ds, args.out / "multiframe.dcm")

    # Broken files.
    whole = (args.out / "mono2-12bit.dcm").read_bytes()
    (args.out / "broken-truncated.dcm").write_bytes(whole[: len(whole) // 2])
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    del ds.PixelData
    save(ds, args.out / "broken-no-pixel-data.dcm")
    ds = dataset(twelve, "MONOCHROME2", 12, False, DX_STORAGE)
    ds.Rows, ds.Columns = 60000, 60000
    save(ds, args.out / "broken-huge.dcm")
    # Says JPEG baseline; holds raw pixels.
    ds = dataset(grey, "MONOCHROME2", 8, False, DX_STORAGE)
    ds = encapsulated(ds, [grey.tobytes()], JPEGBaseline8Bit)
    save(ds, args.out / "broken-wrong-transfer-syntax.dcm", syntax=JPEGBaseline8Bit)
    (args.out / "broken-header-only.dcm").write_bytes(whole[:200])
    # A JPEG stream larger than the header's Rows x Columns.
    ds = dataset(grey[: grey.shape[0] // 2], "MONOCHROME2", 8, False, DX_STORAGE)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=90)
    save(encapsulated(ds, [buffer.getvalue()], JPEGBaseline8Bit), args.out / "broken-jpeg-size.dcm",
         syntax=JPEGBaseline8Bit)


if __name__ == "__main__":
    main()
