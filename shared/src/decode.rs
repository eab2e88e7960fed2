//! Decoding PNG and JPEG bytes into RGB floats, with a pixel limit against decompression bombs.

use std::io::Cursor;

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, Limits, Rgb32FImage};

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

fn check_dimensions(width: u32, height: u32) -> Result<()> {
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

/// Decodes a PNG (8 or 16 bit; gray, gray+alpha, RGB, RGBA) or JPEG (gray, RGB) into RGB in
/// [0, 1]. Gray is replicated into three channels; alpha is dropped, as PIL's `convert("RGB")` does.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb32FImage> {
    if bytes.is_empty() {
        return Err(Error::EmptyInput);
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
    Ok(image.to_rgb32f())
}
