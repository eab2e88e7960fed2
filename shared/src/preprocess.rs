//! torchvision's ResNet eval transform, computed in f32 exactly as its tensor path does:
//! `Resize(256, bilinear, antialias=True)`, `CenterCrop(224)`, then `Normalize(mean, std)`.

use image::Rgb32FImage;

use crate::float::{larger, smaller};
use serde::{Deserialize, Serialize};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The input transform a model was trained with; the model card records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Shorter side after resizing (bilinear with antialiasing).
    pub resize_shorter: u32,
    /// Side of the centre crop.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub channels: String,
    /// Histogram-equalise each channel of the crop before normalising (`equalize`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub equalize: bool,
}

impl Default for Preprocessing {
    fn default() -> Self {
        Self {
            resize_shorter: 256,
            crop: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            channels: "rgb, gray replicated, alpha dropped".into(),
            equalize: false,
        }
    }
}

/// Taps of the antialiased triangle filter for one output index: the first input index and the
/// normalised weights that follow it.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// PyTorch's `_compute_indices_weights_aa` for bilinear: the filter widens with the downscale
/// factor so every input pixel contributes (PIL's antialiasing).
fn filter_taps(in_size: usize, out_size: usize, outputs: std::ops::Range<usize>) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let (support, inv_scale) = if scale >= 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0, 1.0)
    };
    outputs
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|j| {
                    let x = (j as f64 - center + 0.5) * inv_scale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| if total > 0.0 { (w / total) as f32 } else { 0.0 })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// torchvision's `Resize(int)`: the shorter side becomes `shorter`, the longer one keeps the
/// aspect ratio, truncated.
fn resized_size(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    let (short, long) = (width.min(height), width.max(height));
    let new_long = (shorter as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (shorter, new_long)
    } else {
        (new_long, shorter)
    }
}

/// torchvision's centre-crop offset: `int(round((size - crop) / 2))`, with Python's round.
fn crop_offset(size: usize, crop: usize) -> usize {
    ((size as f64 - crop as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as usize
}

/// Where the network's input lies in the original image, as fractions of its width and height
/// (what a heat map must be drawn over).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropRegion {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

/// The resized size and the crop's top-left corner in it.
struct CropGeometry {
    resized: (usize, usize),
    left: usize,
    top: usize,
}

impl Preprocessing {
    fn geometry(&self, width: usize, height: usize) -> CropGeometry {
        let crop = self.crop as usize;
        let resized = resized_size(width, height, self.resize_shorter as usize);
        CropGeometry {
            resized,
            left: crop_offset(resized.0, crop),
            top: crop_offset(resized.1, crop),
        }
    }

    /// The part of a `width` x `height` image that the network sees.
    pub fn crop_region(&self, width: u32, height: u32) -> CropRegion {
        let geometry = self.geometry(width as usize, height as usize);
        let (out_w, out_h) = (geometry.resized.0 as f32, geometry.resized.1 as f32);
        let crop = self.crop as f32;
        CropRegion {
            left: geometry.left as f32 / out_w,
            top: geometry.top as f32 / out_h,
            width: (crop / out_w).min(1.0),
            height: (crop / out_h).min(1.0),
        }
    }

    /// Resize + centre crop in [0, 1], channel-major (3, crop, crop). Only the cropped region is
    /// ever computed, so a long, thin image costs no more than a square one.
    pub fn resized_crop(&self, image: &Rgb32FImage) -> Vec<f32> {
        let (in_w, in_h) = (image.width() as usize, image.height() as usize);
        let crop = self.crop as usize;
        let CropGeometry {
            resized: (out_w, out_h),
            left,
            top,
        } = self.geometry(in_w, in_h);
        let cols = filter_taps(in_w, out_w, left..left + crop);
        let rows = filter_taps(in_h, out_h, top..top + crop);
        let pixels = image.as_raw();

        // Horizontal pass over every input row: (in_h, crop, 3).
        let mut horizontal = vec![0f32; in_h * crop * 3];
        for y in 0..in_h {
            let row = &pixels[y * in_w * 3..(y + 1) * in_w * 3];
            for (x, taps) in cols.iter().enumerate() {
                let mut acc = [0f32; 3];
                for (k, w) in taps.weights.iter().enumerate() {
                    let px = &row[(taps.first + k) * 3..(taps.first + k) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += w * px[c];
                    }
                }
                horizontal[(y * crop + x) * 3..(y * crop + x) * 3 + 3].copy_from_slice(&acc);
            }
        }

        // Vertical pass into channel-major output: (3, crop, crop).
        let plane = crop * crop;
        let mut out = vec![0f32; 3 * plane];
        for (y, taps) in rows.iter().enumerate() {
            for x in 0..crop {
                let mut acc = [0f32; 3];
                for (k, w) in taps.weights.iter().enumerate() {
                    let px = &horizontal[((taps.first + k) * crop + x) * 3..][..3];
                    for c in 0..3 {
                        acc[c] += w * px[c];
                    }
                }
                for c in 0..3 {
                    out[c * plane + y * crop + x] = acc[c];
                }
            }
        }
        out
    }

    /// Turns a channel-major (3, H, W) crop in [0, 1] into the network's input, in place:
    /// equalised when the model was trained so, then normalised with the mean and std.
    pub fn normalize(&self, chw: &mut [f32]) {
        let plane = chw.len() / 3;
        if self.equalize {
            for channel in chw.chunks_mut(plane) {
                equalize(channel);
            }
        }
        for (c, channel) in chw.chunks_mut(plane).enumerate() {
            for v in channel {
                *v = (*v - self.mean[c]) / self.std[c];
            }
        }
    }

    /// The whole eval transform: (3, crop, crop), normalised.
    pub fn apply(&self, image: &Rgb32FImage) -> Vec<f32> {
        let mut chw = self.resized_crop(image);
        self.normalize(&mut chw);
        chw
    }
}

/// Grey levels of the histogram `equalize` flattens.
const LEVELS: usize = 256;

/// Histogram equalisation of one plane in [0, 1]: each value becomes the share of the plane at
/// or below its grey level, counted from the darkest level present (which maps to 0; the
/// brightest maps to 1). An increasing change of brightness, contrast or gamma (a hospital's
/// exposure and processing) gives the same result, up to levels it merges or splits among the
/// 256. A plane of one level is left as it is.
pub fn equalize(plane: &mut [f32]) {
    // `smaller`/`larger`: no libm call per value in wasm (`crate::float`); NaN goes to level 0.
    let level = |v: f32| (smaller(larger(v, 0.0), 1.0) * (LEVELS - 1) as f32 + 0.5) as usize;
    let mut at_or_below = [0usize; LEVELS];
    for &v in plane.iter() {
        at_or_below[level(v)] += 1;
    }
    for l in 1..LEVELS {
        at_or_below[l] += at_or_below[l - 1];
    }
    let darkest = at_or_below.iter().copied().find(|&n| n > 0).unwrap_or(0);
    let spread = plane.len() - darkest;
    if spread == 0 {
        return;
    }
    let lut: [f32; LEVELS] =
        std::array::from_fn(|l| at_or_below[l].saturating_sub(darkest) as f32 / spread as f32);
    for v in plane.iter_mut() {
        *v = lut[level(*v)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_and_stay_in_bounds() {
        for (inp, out) in [(640, 256), (100, 256), (257, 256), (1, 256), (5000, 256)] {
            for taps in filter_taps(inp, out, 0..out) {
                let sum: f32 = taps.weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{inp}->{out}: {sum}");
                assert!(taps.first + taps.weights.len() <= inp);
            }
        }
    }

    #[test]
    fn resize_keeps_aspect_like_torchvision() {
        assert_eq!(resized_size(640, 640, 256), (256, 256));
        assert_eq!(resized_size(1000, 600, 256), (426, 256));
        assert_eq!(resized_size(600, 1001, 256), (256, 427));
        assert_eq!(crop_offset(256, 224), 16);
        assert_eq!(crop_offset(257, 224), 16); // round(16.5) == 16 in Python
        assert_eq!(crop_offset(259, 224), 18); // round(17.5) == 18
    }

    #[test]
    fn crop_region_is_the_centre_part_the_network_sees() {
        let square = Preprocessing::default().crop_region(640, 640);
        assert_eq!(square.left, 16.0 / 256.0);
        assert_eq!(square.width, 224.0 / 256.0);
        let wide = Preprocessing::default().crop_region(1000, 600); // resized to 426 x 256
        assert_eq!(wide.left, 101.0 / 426.0);
        assert_eq!(wide.top, 16.0 / 256.0);
        assert_eq!(wide.height, 224.0 / 256.0);
    }

    #[test]
    fn constant_image_stays_constant() {
        let image = Rgb32FImage::from_pixel(300, 500, image::Rgb([0.25, 0.5, 0.75]));
        let out = Preprocessing::default().resized_crop(&image);
        assert_eq!(out.len(), 3 * 224 * 224);
        for (c, expected) in [0.25f32, 0.5, 0.75].iter().enumerate() {
            let plane = &out[c * 224 * 224..(c + 1) * 224 * 224];
            assert!(plane.iter().all(|v| (v - expected).abs() < 1e-5));
        }
    }

    fn ramp(len: usize) -> Vec<f32> {
        (0..len).map(|i| i as f32 / (len - 1) as f32).collect()
    }

    #[test]
    fn equalising_spreads_the_levels_and_ignores_exposure() {
        // A dim, low-contrast plane: values in [0.2, 0.4].
        let dim: Vec<f32> = ramp(1000).iter().map(|v| 0.2 + 0.2 * v).collect();
        let mut equalized = dim.clone();
        equalize(&mut equalized);
        assert_eq!(equalized[0], 0.0);
        assert_eq!(*equalized.last().unwrap(), 1.0);
        assert!(equalized.windows(2).all(|w| w[0] <= w[1]), "order is kept");
        let mean = equalized.iter().sum::<f32>() / equalized.len() as f32;
        assert!(
            (mean - 0.5).abs() < 0.01,
            "a uniform histogram: mean {mean}"
        );

        // The same plane brighter and under a gamma equalises to nearly the same values (only
        // where two levels merge or split do they differ).
        let mut exposed: Vec<f32> = dim.iter().map(|v| (v + 0.3).powf(0.7)).collect();
        equalize(&mut exposed);
        let largest = equalized
            .iter()
            .zip(&exposed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(largest < 0.03, "largest difference {largest}");
    }

    #[test]
    fn equalising_a_plane_of_one_level_leaves_it_as_it_is() {
        let mut flat = vec![0.3f32; 50];
        equalize(&mut flat);
        assert!(flat.iter().all(|&v| v == 0.3));
        let mut empty: Vec<f32> = Vec::new();
        equalize(&mut empty);
    }

    #[test]
    fn normalize_equalises_only_when_the_card_says_so() {
        let crop: Vec<f32> = [ramp(16), ramp(16), ramp(16)]
            .concat()
            .iter()
            .map(|v| 0.4 + 0.1 * v)
            .collect();
        let plain = Preprocessing::default();
        let equalizing = Preprocessing {
            equalize: true,
            ..Preprocessing::default()
        };
        let (mut a, mut b) = (crop.clone(), crop);
        plain.normalize(&mut a);
        equalizing.normalize(&mut b);
        let denormalized = |v: f32| v * IMAGENET_STD[0] + IMAGENET_MEAN[0];
        assert!((denormalized(a[15]) - 0.5).abs() < 1e-5);
        assert!(
            (denormalized(b[15]) - 1.0).abs() < 1e-5,
            "{}",
            denormalized(b[15])
        );
        assert!(denormalized(b[0]).abs() < 1e-5);
    }

    #[test]
    fn cards_without_equalisation_read_and_write_as_before() {
        let json = serde_json::to_string(&Preprocessing::default()).unwrap();
        assert!(!json.contains("equalize"), "{json}");
        let read: Preprocessing = serde_json::from_str(&json).unwrap();
        assert!(!read.equalize);
    }
}
