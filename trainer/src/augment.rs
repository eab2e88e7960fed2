//! The seed paper's augmentation: random rotation, scaling and translation (torchvision's
//! `RandomAffine`), applied to cached (3, H, W) images in [0, 1] with bilinear sampling and black
//! fill. Every draw comes from (seed, epoch, sample), so a run and its resumption see the same
//! images.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Rotation drawn from [-degrees, degrees].
    pub rotation_degrees: f32,
    /// Translation drawn from [-f, f] of the width/height.
    pub translate_fraction: f32,
    /// Scale drawn from [1 - s, 1 + s].
    pub scale_delta: f32,
}

impl Augmentation {
    pub fn is_identity(&self) -> bool {
        self.rotation_degrees == 0.0 && self.translate_fraction == 0.0 && self.scale_delta == 0.0
    }

    /// A reproducible generator for one sample in one epoch.
    pub fn rng(seed: u64, epoch: usize, sample: usize) -> StdRng {
        let mixed = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((epoch as u64) << 32)
            .wrapping_add(sample as u64);
        StdRng::seed_from_u64(mixed)
    }

    /// Returns the transformed copy of `chw` (3, side, side).
    pub fn apply(&self, chw: &[f32], side: usize, rng: &mut StdRng) -> Vec<f32> {
        if self.is_identity() {
            return chw.to_vec();
        }
        let mut draw = |range: f32| {
            if range > 0.0 {
                rng.random_range(-range..=range)
            } else {
                0.0
            }
        };
        let angle = draw(self.rotation_degrees).to_radians();
        let tx = draw(self.translate_fraction) * side as f32;
        let ty = draw(self.translate_fraction) * side as f32;
        let scale = 1.0 + draw(self.scale_delta);
        warp(chw, side, angle, scale, tx, ty)
    }
}

/// Rotation by `angle` and scaling by `scale` about the centre, then a shift of (tx, ty) pixels:
/// each output pixel samples the input at the inverse-mapped point.
fn warp(chw: &[f32], side: usize, angle: f32, scale: f32, tx: f32, ty: f32) -> Vec<f32> {
    let plane = side * side;
    let centre = (side as f32 - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    let mut out = vec![0f32; chw.len()];
    for y in 0..side {
        for x in 0..side {
            let (dx, dy) = (x as f32 - centre - tx, y as f32 - centre - ty);
            let sx = (cos * dx + sin * dy) / scale + centre;
            let sy = (-sin * dx + cos * dy) / scale + centre;
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
                out[c * plane + y * side + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_parameters_leave_the_image_unchanged() {
        let image: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 17) as f32 / 17.0).collect();
        let out = warp(&image, 16, 0.0, 1.0, 0.0, 0.0);
        assert!(image.iter().zip(&out).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn draws_are_reproducible_per_seed_epoch_and_sample() {
        let aug = Augmentation {
            rotation_degrees: 10.0,
            translate_fraction: 0.1,
            scale_delta: 0.1,
        };
        let image: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 29) as f32 / 29.0).collect();
        let a = aug.apply(&image, 32, &mut Augmentation::rng(1, 2, 3));
        let b = aug.apply(&image, 32, &mut Augmentation::rng(1, 2, 3));
        let c = aug.apply(&image, 32, &mut Augmentation::rng(1, 3, 3));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_shift_moves_content_and_fills_black() {
        let side = 8;
        let image = vec![1.0f32; 3 * side * side];
        let out = warp(&image, side, 0.0, 1.0, 2.0, 0.0);
        assert_eq!(out[0], 0.0); // the two left columns came from outside
        assert_eq!(out[side - 1], 1.0);
    }
}
