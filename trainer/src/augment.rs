//! Training augmentation on cached (3, side, side) images in [0, 1]:
//! - the seed paper's random rotation, scaling and translation (torchvision's `RandomAffine`,
//!   bilinear sampling, black fill);
//! - against shortcuts that tell sources apart rather than diseases: a random resized crop with
//!   aspect-ratio jitter (one public copy squashed every image to 640x640), brightness, contrast
//!   and gamma (each collection was exposed and post-processed its own way), sharpness (each
//!   detector and resampling chain left its own amount of fine detail), and JPEG re-encoding at a
//!   random quality (each was compressed its own way).
//!
//! Every draw comes from (seed, epoch, draw index), so a run and its resumption see the same
//! images.

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::planar;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Rotation drawn from [-degrees, degrees].
    pub rotation_degrees: f32,
    /// Translation drawn from [-f, f] of the width/height.
    pub translate_fraction: f32,
    /// Scale drawn from [1 - s, 1 + s].
    pub scale_delta: f32,
    /// Random resized crop: the window covers a share of the cached image's area drawn from
    /// [min, 1] (1: off, the centre crop is used).
    #[serde(default = "one")]
    pub crop_area_min: f32,
    /// The window's aspect ratio (width / height) is drawn log-uniformly from [1/a, a].
    #[serde(default = "one")]
    pub aspect_max: f32,
    /// Additive brightness drawn from [-b, b].
    #[serde(default)]
    pub brightness: f32,
    /// Contrast factor about the image mean drawn from [1 - c, 1 + c].
    #[serde(default)]
    pub contrast: f32,
    /// Gamma drawn log-uniformly from [1/(1 + g), 1 + g].
    #[serde(default)]
    pub gamma: f32,
    /// Sharpness factor drawn from [1 - s, 1 + s]: 0 is the 3x3-smoothed image, 1 the image,
    /// above 1 sharpened (torchvision's `adjust_sharpness`).
    #[serde(default)]
    pub sharpness: f32,
    /// Share of images re-encoded as JPEG.
    #[serde(default)]
    pub jpeg_probability: f32,
    /// Lowest JPEG quality drawn (up to 95).
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality_min: u8,
}

/// serde default of the crop-area and aspect settings (off).
pub fn one() -> f32 {
    1.0
}

/// serde default of the lowest JPEG quality.
pub fn default_jpeg_quality() -> u8 {
    40
}

impl Default for Augmentation {
    /// No augmentation at all.
    fn default() -> Self {
        Self {
            rotation_degrees: 0.0,
            translate_fraction: 0.0,
            scale_delta: 0.0,
            crop_area_min: 1.0,
            aspect_max: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            gamma: 0.0,
            sharpness: 0.0,
            jpeg_probability: 0.0,
            jpeg_quality_min: default_jpeg_quality(),
        }
    }
}

/// The part of the cached image that becomes the network's input, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

impl Window {
    /// torchvision's centre crop of `out` pixels from a `side`-pixel image.
    pub fn centre(side: usize, out: usize) -> Self {
        let offset = ((side as f32 - out as f32) / 2.0)
            .round_ties_even()
            .max(0.0);
        Self {
            left: offset,
            top: offset,
            width: out as f32,
            height: out as f32,
        }
    }
}

/// Symmetric draw from [-range, range]; 0 when the range is 0.
fn symmetric(rng: &mut StdRng, range: f32) -> f32 {
    if range > 0.0 {
        rng.random_range(-range..=range)
    } else {
        0.0
    }
}

/// Log-uniform draw from [1/max, max].
fn log_uniform(rng: &mut StdRng, max: f32) -> f32 {
    symmetric(rng, max.max(1.0).ln()).exp()
}

impl Augmentation {
    /// A reproducible generator for one draw in one epoch.
    pub fn rng(seed: u64, epoch: usize, draw: usize) -> StdRng {
        let mixed = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((epoch as u64) << 32)
            .wrapping_add(draw as u64);
        StdRng::seed_from_u64(mixed)
    }

    pub fn random_crop(&self) -> bool {
        self.crop_area_min < 1.0 || self.aspect_max > 1.0
    }

    /// The window a random resized crop takes from a `side`-pixel image (torchvision's
    /// `RandomResizedCrop` draw, clamped to the image), or the centre crop when off.
    pub fn window(&self, side: usize, out: usize, rng: &mut StdRng) -> Window {
        if !self.random_crop() {
            return Window::centre(side, out);
        }
        let area = rng.random_range(self.crop_area_min.clamp(0.05, 1.0)..=1.0);
        let aspect = log_uniform(rng, self.aspect_max);
        let full = side as f32;
        let width = (full * (area * aspect).sqrt()).min(full);
        let height = (full * (area / aspect).sqrt()).min(full);
        Window {
            left: rng.random_range(0.0..=full - width),
            top: rng.random_range(0.0..=full - height),
            width,
            height,
        }
    }

    /// The augmented network input (3, out, out) from a cached (3, side, side) image.
    pub fn apply(&self, chw: &[f32], side: usize, out: usize, rng: &mut StdRng) -> Vec<f32> {
        let window = self.window(side, out, rng);
        let affine = Affine {
            angle: symmetric(rng, self.rotation_degrees).to_radians(),
            translate_x: symmetric(rng, self.translate_fraction) * out as f32,
            translate_y: symmetric(rng, self.translate_fraction) * out as f32,
            scale: 1.0 + symmetric(rng, self.scale_delta),
        };
        let mut image = warp(chw, side, window, affine, out);
        if self.sharpness > 0.0 {
            adjust_sharpness(&mut image, out, 1.0 + symmetric(rng, self.sharpness));
        }
        self.adjust_intensity(&mut image, rng);
        if self.jpeg_probability > 0.0 && rng.random::<f32>() < self.jpeg_probability {
            let quality = rng.random_range(self.jpeg_quality_min.clamp(1, 95)..=95);
            if let Some(encoded) = jpeg_round_trip(&image, out, quality) {
                image = encoded;
            }
        }
        image
    }

    /// Contrast about the mean, brightness, then gamma, all channels alike; values stay in [0, 1].
    fn adjust_intensity(&self, image: &mut [f32], rng: &mut StdRng) {
        if self.brightness == 0.0 && self.contrast == 0.0 && self.gamma == 0.0 {
            return;
        }
        let contrast = 1.0 + symmetric(rng, self.contrast);
        let brightness = symmetric(rng, self.brightness);
        let gamma = log_uniform(rng, 1.0 + self.gamma);
        let mean = image.iter().sum::<f32>() / image.len().max(1) as f32;
        for v in image.iter_mut() {
            let shifted = (mean + contrast * (*v - mean) + brightness).clamp(0.0, 1.0);
            *v = shifted.powf(gamma);
        }
    }
}

/// torchvision's `adjust_sharpness` on each (side, side) plane: a blend of the image with its
/// 3x3 smoothing (centre weight 5, neighbours 1), `factor` 0 the smoothed image, 1 the image;
/// border pixels stay as they are; values stay in [0, 1].
fn adjust_sharpness(image: &mut [f32], side: usize, factor: f32) {
    if side < 3 {
        return;
    }
    for plane in image.chunks_exact_mut(side * side) {
        let smoothed = smooth_3x3(plane, side);
        for (v, s) in plane.iter_mut().zip(smoothed) {
            *v = (s + factor * (*v - s)).clamp(0.0, 1.0);
        }
    }
}

/// The plane smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 inside, its border copied.
fn smooth_3x3(plane: &[f32], side: usize) -> Vec<f32> {
    let mut smoothed = plane.to_vec();
    for y in 1..side - 1 {
        for x in 1..side - 1 {
            let mut sum = 4.0 * plane[y * side + x];
            for row in y - 1..=y + 1 {
                sum += plane[row * side + x - 1..=row * side + x + 1]
                    .iter()
                    .sum::<f32>();
            }
            smoothed[y * side + x] = sum / 13.0;
        }
    }
    smoothed
}

/// Rotation by `angle` and scaling by `scale` about the output's centre, then a shift, in output
/// pixels.
#[derive(Debug, Clone, Copy)]
struct Affine {
    angle: f32,
    translate_x: f32,
    translate_y: f32,
    scale: f32,
}

/// Each output pixel samples the source at its inverse-mapped point: through the affine map into
/// the window, then into the `side`-pixel source (bilinear, black outside).
fn warp(chw: &[f32], side: usize, window: Window, affine: Affine, out: usize) -> Vec<f32> {
    let (plane, out_plane) = (side * side, out * out);
    let centre = (out as f32 - 1.0) / 2.0;
    let (sin, cos) = affine.angle.sin_cos();
    let (step_x, step_y) = (window.width / out as f32, window.height / out as f32);
    let mut result = vec![0f32; 3 * out_plane];
    for y in 0..out {
        for x in 0..out {
            let (dx, dy) = (
                x as f32 - centre - affine.translate_x,
                y as f32 - centre - affine.translate_y,
            );
            let wx = (cos * dx + sin * dy) / affine.scale + centre;
            let wy = (-sin * dx + cos * dy) / affine.scale + centre;
            let sx = window.left + (wx + 0.5) * step_x - 0.5;
            let sy = window.top + (wy + 0.5) * step_y - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            for c in 0..3 {
                let at = |xi: f32, yi: f32| -> f32 {
                    if xi < 0.0 || yi < 0.0 || xi >= side as f32 || yi >= side as f32 {
                        0.0
                    } else {
                        chw[c * plane + yi as usize * side + xi as usize]
                    }
                };
                let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
                let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
                result[c * out_plane + y * out + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    result
}

/// The image encoded as an RGB JPEG at `quality` and decoded again; `None` if the codec fails
/// (the caller keeps the image as it was).
fn jpeg_round_trip(chw: &[f32], side: usize, quality: u8) -> Option<Vec<f32>> {
    let rgb = DynamicImage::ImageRgb32F(planar::to_image(chw, side)).into_rgb8();
    let mut encoded = Vec::new();
    JpegEncoder::new_with_quality(&mut encoded, quality)
        .encode_image(&rgb)
        .ok()?;
    let decoded = image::load_from_memory_with_format(&encoded, ImageFormat::Jpeg)
        .ok()?
        .into_rgb32f();
    (decoded.dimensions() == rgb.dimensions()).then(|| planar::from_image(&decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(side: usize) -> Vec<f32> {
        (0..3 * side * side)
            .map(|i| (i % 29) as f32 / 29.0)
            .collect()
    }

    fn paper() -> Augmentation {
        Augmentation {
            rotation_degrees: 10.0,
            translate_fraction: 0.1,
            scale_delta: 0.1,
            ..Augmentation::default()
        }
    }

    fn against_shortcuts() -> Augmentation {
        Augmentation {
            crop_area_min: 0.5,
            aspect_max: 1.33,
            brightness: 0.1,
            contrast: 0.2,
            gamma: 0.3,
            sharpness: 0.5,
            jpeg_probability: 1.0,
            jpeg_quality_min: 30,
            ..paper()
        }
    }

    #[test]
    fn no_augmentation_is_the_centre_crop() {
        let image = ramp(20);
        let out = Augmentation::default().apply(&image, 20, 16, &mut Augmentation::rng(0, 0, 0));
        assert_eq!(out.len(), 3 * 16 * 16);
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let expected = image[c * 400 + (y + 2) * 20 + x + 2];
                    assert!((out[c * 256 + y * 16 + x] - expected).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn draws_are_reproducible_per_seed_epoch_and_draw() {
        for aug in [paper(), against_shortcuts()] {
            let image = ramp(40);
            let a = aug.apply(&image, 40, 32, &mut Augmentation::rng(1, 2, 3));
            let b = aug.apply(&image, 40, 32, &mut Augmentation::rng(1, 2, 3));
            let c = aug.apply(&image, 40, 32, &mut Augmentation::rng(1, 3, 3));
            assert_eq!(a, b);
            assert_ne!(a, c);
            assert_eq!(a.len(), 3 * 32 * 32);
            assert!(
                a.iter().all(|v| (0.0..=1.0).contains(v)),
                "values in [0, 1]"
            );
        }
    }

    #[test]
    fn a_shift_moves_content_and_fills_black() {
        let side = 8;
        let image = vec![1.0f32; 3 * side * side];
        let shift = Affine {
            angle: 0.0,
            translate_x: 2.0,
            translate_y: 0.0,
            scale: 1.0,
        };
        let out = warp(&image, side, Window::centre(side, side), shift, side);
        assert_eq!(out[0], 0.0); // the two left columns came from outside
        assert_eq!(out[side - 1], 1.0);
    }

    #[test]
    fn windows_stay_inside_and_their_aspect_really_varies() {
        let aug = against_shortcuts();
        let mut rng = Augmentation::rng(7, 0, 0);
        let aspects: Vec<f32> = (0..500)
            .map(|_| {
                let w = aug.window(128, 112, &mut rng);
                assert!(w.left >= 0.0 && w.top >= 0.0);
                assert!(w.left + w.width <= 128.001 && w.top + w.height <= 128.001);
                let area = w.width * w.height / (128.0 * 128.0);
                assert!((0.4..=1.0001).contains(&area), "area {area}");
                w.width / w.height
            })
            .collect();
        let (lo, hi) = aspects
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &a| (lo.min(a), hi.max(a)));
        assert!(lo < 0.85 && hi > 1.15, "aspect range {lo}..{hi}");
        assert!(
            lo >= 1.0 / 1.34 && hi <= 1.34 * 1.34,
            "aspect range {lo}..{hi}"
        );
    }

    #[test]
    fn a_wide_window_squeezes_a_square_into_a_tall_shape() {
        // A bright 16x16 square in a 64-pixel image, seen through a window twice as wide as tall.
        let side = 64;
        let mut image = vec![0f32; 3 * side * side];
        for c in 0..3 {
            for y in 24..40 {
                for x in 24..40 {
                    image[c * side * side + y * side + x] = 1.0;
                }
            }
        }
        let window = Window {
            left: 0.0,
            top: 16.0,
            width: 64.0,
            height: 32.0,
        };
        let still = Affine {
            angle: 0.0,
            translate_x: 0.0,
            translate_y: 0.0,
            scale: 1.0,
        };
        let out = warp(&image, side, window, still, 32);
        let bright = |i: usize| out[i] > 0.5;
        let width = (0..32).filter(|&x| bright(16 * 32 + x)).count();
        let height = (0..32).filter(|&y| bright(y * 32 + 16)).count();
        assert_eq!((width, height), (8, 16));
    }

    #[test]
    fn intensity_changes_keep_values_in_range_and_change_them() {
        let aug = Augmentation {
            brightness: 0.2,
            contrast: 0.3,
            gamma: 0.5,
            ..Augmentation::default()
        };
        let image = ramp(16);
        let out = aug.apply(&image, 16, 16, &mut Augmentation::rng(3, 0, 1));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        let moved: f32 = out.iter().zip(&image).map(|(a, b)| (a - b).abs()).sum();
        assert!(moved > 1.0, "intensities changed ({moved})");
    }

    /// Mean squared difference between horizontal neighbours: how much fine detail a plane has.
    fn detail(plane: &[f32], side: usize) -> f32 {
        let mut sum = 0.0;
        for y in 0..side {
            for x in 1..side {
                sum += (plane[y * side + x] - plane[y * side + x - 1]).powi(2);
            }
        }
        sum / (side * (side - 1)) as f32
    }

    /// A mid-grey checkerboard of single pixels: all fine detail.
    fn checkerboard(side: usize) -> Vec<f32> {
        (0..3 * side * side)
            .map(|i| 0.3 + 0.4 * ((i % side + i / side) % 2) as f32)
            .collect()
    }

    #[test]
    fn sharpness_blurs_below_one_sharpens_above_and_keeps_the_border() {
        let side = 16;
        let checks = checkerboard(side);
        let adjusted = |factor: f32| {
            let mut image = checks.clone();
            adjust_sharpness(&mut image, side, factor);
            image
        };
        assert_eq!(adjusted(1.0), checks);
        let (blurred, sharpened) = (adjusted(0.5), adjusted(1.5));
        let original = detail(&checks[..side * side], side);
        assert!(detail(&blurred[..side * side], side) < 0.6 * original);
        assert!(detail(&sharpened[..side * side], side) > 1.4 * original);
        assert!(sharpened.iter().all(|v| (0.0..=1.0).contains(v)));
        for c in 0..3 {
            let plane = c * side * side;
            assert_eq!(blurred[plane..plane + side], checks[plane..plane + side]);
        }
    }

    #[test]
    fn sharpness_draws_vary_the_detail_of_the_same_image() {
        let aug = Augmentation {
            sharpness: 0.5,
            ..Augmentation::default()
        };
        let image = checkerboard(24);
        let details: Vec<f32> = (0..40)
            .map(|draw| {
                let out = aug.apply(&image, 24, 24, &mut Augmentation::rng(5, 0, draw));
                detail(&out[..24 * 24], 24)
            })
            .collect();
        let original = detail(&image[..24 * 24], 24);
        assert!(details.iter().any(|&d| d < 0.9 * original));
        assert!(details.iter().any(|&d| d > 1.1 * original));
    }

    #[test]
    fn jpeg_round_trip_is_lossy_but_close() {
        let image = ramp(32);
        let low = jpeg_round_trip(&image, 32, 20).unwrap();
        let error = |other: &[f32]| -> f32 {
            other
                .iter()
                .zip(&image)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / image.len() as f32
        };
        let high = jpeg_round_trip(&image, 32, 95).unwrap();
        assert!(error(&low) > error(&high), "lower quality loses more");
        assert!(error(&high) < 0.05);
        assert!(error(&low) > 0.0);
    }
}
