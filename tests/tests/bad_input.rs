//! Every kind of bad image input returns a clear error, never a panic; every supported kind of
//! good input decodes to three channels.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use pneumoscope::decode::{decode_rgb, MAX_PIXELS};
use pneumoscope::{Error, Preprocessing};

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn gray_png() -> Vec<u8> {
    let image = ImageBuffer::from_fn(64, 48, |x, y| Luma([(x * 3 + y) as u8]));
    encode(DynamicImage::ImageLuma8(image), ImageFormat::Png)
}

fn rgb_jpeg() -> Vec<u8> {
    let image = ImageBuffer::from_fn(64, 48, |x, y| Rgb([x as u8 * 4, y as u8 * 5, 128]));
    encode(DynamicImage::ImageRgb8(image), ImageFormat::Jpeg)
}

#[test]
fn empty_input_is_rejected() {
    assert!(matches!(decode_rgb(&[]), Err(Error::EmptyInput)));
}

#[test]
fn non_image_is_rejected() {
    let err = decode_rgb(b"%PDF-1.7 this is not an image at all").unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat), "{err}");
    // A format the image crate knows but we do not accept.
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    assert!(matches!(decode_rgb(gif), Err(Error::UnsupportedFormat)));
}

#[test]
fn truncated_png_and_jpeg_are_rejected() {
    for bytes in [gray_png(), rgb_jpeg()] {
        for keep in [8, 30, bytes.len() / 2] {
            let result = decode_rgb(&bytes[..keep]);
            assert!(result.is_err(), "kept {keep} of {} bytes", bytes.len());
        }
    }
}

/// The JPEG decoder pads a cut-off file with grey and succeeds; a real radiograph cut anywhere
/// must still be refused.
#[test]
fn truncated_real_radiograph_is_rejected() {
    let path = pneumoscope_tests::shared_data_dir().join("covid19-kaggle/test/Covid/0100.jpeg");
    let bytes = std::fs::read(&path).expect("the shared data set is beside the repository");
    assert!(decode_rgb(&bytes).is_ok());
    for keep in [2000, bytes.len() / 2, bytes.len() - 10] {
        let err = decode_rgb(&bytes[..keep]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "kept {keep}: {err}");
    }
}

#[test]
fn corrupt_png_is_rejected() {
    let mut bytes = gray_png();
    let n = bytes.len();
    for b in &mut bytes[40..n - 12] {
        *b ^= 0x5a;
    }
    let err = decode_rgb(&bytes).unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err}");
}

#[test]
fn decompression_bomb_is_rejected_before_decoding() {
    // 8000 x 8000 zeros: a few tens of kB compressed, 64 megapixels decoded.
    let side = 8000u32;
    assert!(u64::from(side) * u64::from(side) > MAX_PIXELS);
    let image = ImageBuffer::from_pixel(side, side, Luma([0u8]));
    let bytes = encode(DynamicImage::ImageLuma8(image), ImageFormat::Png);
    assert!(bytes.len() < 1 << 20);
    let err = decode_rgb(&bytes).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("over the limit"));
}

#[test]
fn every_supported_layout_decodes_to_rgb() {
    let (w, h) = (20, 10);
    let cases: Vec<(&str, Vec<u8>, [f32; 3])> = vec![
        (
            "png gray 8",
            encode(
                DynamicImage::ImageLuma8(ImageBuffer::from_pixel(w, h, Luma([51]))),
                ImageFormat::Png,
            ),
            [0.2, 0.2, 0.2],
        ),
        (
            "png gray 16",
            encode(
                DynamicImage::ImageLuma16(ImageBuffer::from_pixel(w, h, Luma([13107u16]))),
                ImageFormat::Png,
            ),
            [0.2, 0.2, 0.2],
        ),
        (
            "png gray+alpha",
            encode(
                DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(w, h, LumaA([102, 7]))),
                ImageFormat::Png,
            ),
            [0.4, 0.4, 0.4],
        ),
        (
            "png rgb 16",
            encode(
                DynamicImage::ImageRgb16(ImageBuffer::from_pixel(w, h, Rgb([0, 32768, 65535]))),
                ImageFormat::Png,
            ),
            [0.0, 0.5, 1.0],
        ),
        (
            "png rgba",
            encode(
                DynamicImage::ImageRgba8(ImageBuffer::from_pixel(w, h, Rgba([255, 0, 51, 0]))),
                ImageFormat::Png,
            ),
            [1.0, 0.0, 0.2],
        ),
        (
            "jpeg gray",
            encode(
                DynamicImage::ImageLuma8(ImageBuffer::from_pixel(w, h, Luma([153]))),
                ImageFormat::Jpeg,
            ),
            [0.6, 0.6, 0.6],
        ),
        (
            "jpeg rgb",
            encode(
                DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb([200, 100, 50]))),
                ImageFormat::Jpeg,
            ),
            [200.0 / 255.0, 100.0 / 255.0, 50.0 / 255.0],
        ),
    ];
    for (name, bytes, expected) in cases {
        let image = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((image.width(), image.height()), (w, h), "{name}");
        let px = image.get_pixel(w / 2, h / 2).0;
        for c in 0..3 {
            // JPEG is lossy: allow a few levels.
            assert!(
                (px[c] - expected[c]).abs() < 0.02,
                "{name}: {px:?} vs {expected:?}"
            );
        }
        let tensor = Preprocessing::default().apply(&image);
        assert_eq!(tensor.len(), 3 * 224 * 224, "{name}");
        assert!(tensor.iter().all(|v| v.is_finite()), "{name}");
    }
}

#[test]
fn extreme_aspect_ratios_preprocess_without_blowing_up() {
    for (w, h) in [(1, 1), (1, 3000), (3000, 1), (7, 5)] {
        let image = ImageBuffer::from_pixel(w, h, Luma([200u8]));
        let bytes = encode(DynamicImage::ImageLuma8(image), ImageFormat::Png);
        let decoded = decode_rgb(&bytes).unwrap();
        let tensor = Preprocessing::default().apply(&decoded);
        assert_eq!(tensor.len(), 3 * 224 * 224);
        let expected = (200.0 / 255.0 - 0.485) / 0.229;
        assert!(
            (tensor[0] - expected).abs() < 1e-4,
            "{w}x{h}: {}",
            tensor[0]
        );
    }
}
