//! Decoding PNG, JPEG and DICOM bytes into RGB floats, with a pixel limit against decompression
//! bombs.

use std::io::Cursor;

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::{PngDecoder, PngEncoder};
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageFormat, Limits, Rgb32FImage};

use crate::dicom::{decode_dicom, is_dicom, DicomInfo};
use crate::error::{Error, Result};

/// The largest image accepted, in pixels: a 50-megapixel radiograph is already far beyond any
/// digital detector, and it bounds memory at a few hundred MB before resizing.
pub const MAX_PIXELS: u64 = 50_000_000;

fn decode_error(err: image::ImageError) -> Error {
    match err {
        image::ImageError::Limits(_) => {
            Error::Decode(format!("image exceeds memory limits: {err}"))
        }
        other => Error::Decode(other.to_string()),
    }
}

pub(crate) fn check_dimensions(width: u32, height: u32) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(Error::ZeroSized { width, height });
    }
    if pixels > MAX_PIXELS {
        return Err(Error::TooLarge {
            width,
            height,
            pixels,
            limit: MAX_PIXELS,
        });
    }
    Ok(())
}

fn decode_with<D: ImageDecoder>(mut decoder: D) -> Result<DynamicImage> {
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height)?;
    let mut limits = Limits::default();
    // Decoded 16-bit RGBA is 8 bytes a pixel; leave room for the decoder's own buffers.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    decoder.set_limits(limits).map_err(decode_error)?;
    DynamicImage::from_decoder(decoder).map_err(decode_error)
}

/// How far before the end of a JPEG file its end-of-image marker may sit (some writers pad).
const JPEG_TAIL: usize = 64;

/// The JPEG decoder fills a cut-off file with grey and reports success; a radiograph missing
/// its lower half must be refused instead. Complete files end with the end-of-image marker.
fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let tail = &bytes[bytes.len().saturating_sub(JPEG_TAIL)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(Error::Decode(
            "the JPEG file is truncated (no end-of-image marker)".into(),
        ))
    }
}

/// A decoded image, and how a DICOM file's grey levels were made when it was one.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: Rgb32FImage,
    pub dicom: Option<DicomInfo>,
}

/// Decodes a PNG (8 or 16 bit; gray, gray+alpha, RGB, RGBA), JPEG (gray, RGB) or DICOM file
/// (see [`crate::dicom`]) into RGB in [0, 1]. Gray is replicated into three channels; alpha is
/// dropped, as PIL's `convert("RGB")` does.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    if bytes.is_empty() {
        return Err(Error::EmptyInput);
    }
    if is_dicom(bytes) {
        let (image, info) = decode_dicom(bytes)?;
        return Ok(Decoded {
            image,
            dicom: Some(info),
        });
    }
    let image = match image::guess_format(bytes) {
        Ok(ImageFormat::Png) => {
            decode_with(PngDecoder::new(Cursor::new(bytes)).map_err(decode_error)?)?
        }
        Ok(ImageFormat::Jpeg) => {
            check_jpeg_complete(bytes)?;
            decode_with(JpegDecoder::new(Cursor::new(bytes)).map_err(decode_error)?)?
        }
        _ => return Err(Error::UnsupportedFormat),
    };
    Ok(Decoded {
        image: image.to_rgb32f(),
        dicom: None,
    })
}

/// [`decode`]'s image alone.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb32FImage> {
    decode(bytes).map(|d| d.image)
}

/// `image` as an 8-bit PNG no larger than `max_side` on either side (grey when its channels
/// agree), for showing a picture the browser cannot decode itself, such as a windowed DICOM.
pub fn preview_png(image: &Rgb32FImage, max_side: u32) -> Result<Vec<u8>> {
    let (width, height) = image.dimensions();
    let scale = (f64::from(max_side) / f64::from(width.max(height))).min(1.0);
    let size = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
    let shown = if scale < 1.0 {
        imageops::resize(image, size(width), size(height), FilterType::Triangle)
    } else {
        image.clone()
    };
    let grey = shown.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]);
    let rgb = DynamicImage::ImageRgb32F(shown);
    let mut png = Vec::new();
    let encoder = PngEncoder::new(&mut png);
    let written = if grey {
        rgb.to_luma8().write_with_encoder(encoder)
    } else {
        rgb.to_rgb8().write_with_encoder(encoder)
    };
    written.map_err(|e| Error::Decode(format!("could not render the preview: {e}")))?;
    Ok(png)
}
