//! The folded stem (7x7 convolution, stride 2, with its ReLU) in inference, its sums in a
//! fixed order (`ops::ordered_product`) so that the page gives `trainer predict`'s bits for
//! every image; a grey radiograph's as a one-channel convolution, a third of the products.
//!
//! A grey image reaches the network as one plane normalised three ways: channel c is
//! `a_c * x_0 + b_c` with `a_c = std_0 / std_c` and `b_c = (mean_0 - mean_c) / std_c`. The
//! convolution of the three is then the convolution of `x_0` with `sum_c a_c W_c`, plus
//! `sum_c b_c W_c` summed over the taps that fall inside the image: zero padding pads every
//! channel with 0, not with `b_c`, so this term is one constant per output channel inside the
//! image and other values along its border. It is computed once per input size, with the bias,
//! as the sums' starting value. The same outputs as the three-channel convolution, to float
//! rounding. A colour image takes the three-channel kernel, from the bias.

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};

use crate::float::relu;
use crate::ops::conv::Geometry;
use crate::ops::ordered_product::{accumulate_in_order, weight_blocks, ROWS};
use crate::ops::threads;

/// Largest difference (normalised units) between a channel and the first channel's value
/// normalised the other way that still counts as grey: f32 rounding is about 1e-6, while one
/// 8-bit step is 1 / 255 / 0.229 = 0.017.
const GREY_TOLERANCE: f32 = 1e-4;

#[derive(Debug)]
pub struct InferenceStem {
    /// `sum_c a_c W_c` (C_out, K * K) as `ordered_product` blocks.
    grey_weight: Vec<[f32; ROWS]>,
    /// The folded kernel (C_out, 3 * K * K) as `ordered_product` blocks.
    weight: Vec<[f32; ROWS]>,
    /// The folded batch norm's bias, one per output channel.
    bias: Vec<f32>,
    config: Conv2dConfig,
    /// `(a_1, b_1)`, `(a_2, b_2)`: channels 1 and 2 as functions of channel 0.
    affine: [(f32, f32); 2],
    /// (C_out, K + 1, K + 1) running sums of `sum_c b_c W_c` over taps, for rectangle sums.
    offset_sums: Vec<f32>,
    c_out: usize,
    kernel: usize,
    /// A grey image's sums' start, bias plus border term, for the last input size.
    grey_start: Mutex<Option<SumsStart>>,
}

/// The sums' starting value for one input size (H, W): (C_out, H_out * W_out).
type SumsStart = ((usize, usize), Arc<Vec<f32>>);

impl InferenceStem {
    /// From the folded stem convolution (C_out, 3, K, K) and the preprocessing's mean and std.
    pub fn new(stem: &Conv2d, mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        let (c_out, c_in, kernel, kernel_w) = stem.weight().dims4()?;
        if c_in != 3 || kernel != kernel_w {
            candle_core::bail!("the inference stem needs a square three-channel convolution");
        }
        let a = std.map(|s| std[0] / s);
        let b: [f32; 3] = std::array::from_fn(|c| (mean[0] - mean[c]) / std[c]);
        let weight: Vec<f32> = stem.weight().flatten_all()?.to_vec1()?;
        let taps = kernel * kernel;
        let mut grey = vec![0f32; c_out * taps];
        let mut offsets = vec![0f32; c_out * taps];
        for o in 0..c_out {
            for t in 0..taps {
                for c in 0..3 {
                    let w = weight[(o * 3 + c) * taps + t];
                    grey[o * taps + t] += a[c] * w;
                    offsets[o * taps + t] += b[c] * w;
                }
            }
        }
        let Some(bias) = stem.bias() else {
            candle_core::bail!(
                "the inference stem needs the folded stem (a convolution with a bias)"
            )
        };
        Ok(Self {
            grey_weight: weight_blocks(&grey, taps),
            weight: weight_blocks(&weight, 3 * taps),
            bias: bias.to_vec1()?,
            config: *stem.config(),
            affine: [(a[1], b[1]), (a[2], b[2])],
            offset_sums: running_sums(&offsets, c_out, kernel),
            c_out,
            kernel,
            grey_start: Mutex::new(None),
        })
    }

    /// relu(stem(x)), from `x`'s first channel where an image is grey; `None` when a gradient
    /// is to reach `x` (this op passes none back).
    /// (N, 3, H, W) -> (N, C_out, H_out, W_out)
    pub fn forward(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = x.dims4()?;
        if c != 3 || x.track_op() {
            return Ok(None);
        }
        let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let k = self.kernel;
        let grey = Geometry::new((n, 1, h, w), (self.c_out, 1, k, k), self.config)?;
        let colour = Geometry::new((n, 3, h, w), (self.c_out, 3, k, k), self.config)?;
        let positions = grey.positions();
        let grey_start = self.grey_start(h, w)?;
        let mut y = Vec::with_capacity(n * self.c_out * positions);
        let mut scratch = Vec::new();
        for image in values.chunks(3 * h * w) {
            let mut out;
            if self.is_grey(image, h * w) {
                out = grey_start.to_vec();
                let patches = grey.group_patches(&image[..h * w], &mut scratch, threads());
                accumulate_in_order(&mut out, &self.grey_weight, patches, k * k, positions);
            } else {
                out = self
                    .bias
                    .iter()
                    .flat_map(|&b| std::iter::repeat_n(b, positions))
                    .collect();
                let patches = colour.group_patches(image, &mut scratch, threads());
                accumulate_in_order(&mut out, &self.weight, patches, 3 * k * k, positions);
            }
            out.iter_mut().for_each(|v| *v = relu(*v));
            y.extend(out);
        }
        Tensor::from_vec(y, grey.output(), x.device()).map(Some)
    }

    /// The image's (3, plane) values are one plane normalised three ways.
    fn is_grey(&self, image: &[f32], plane: usize) -> bool {
        let (first, rest) = image.split_at(plane);
        rest.chunks(plane)
            .zip(self.affine)
            .all(|(channel, (a, b))| {
                channel
                    .iter()
                    .zip(first)
                    .all(|(&v, &x0)| (v - (a * x0 + b)).abs() <= GREY_TOLERANCE)
            })
    }

    /// The bias plus the offset term for an (H, W) input: (C_out, H_out * W_out), kept for the
    /// next call.
    fn grey_start(&self, h: usize, w: usize) -> Result<Arc<Vec<f32>>> {
        let mut kept = self
            .grey_start
            .lock()
            .map_err(|_| candle_core::Error::Msg("the grey stem's lock is poisoned".into()))?;
        if let Some(((kh, kw), start)) = kept.as_ref() {
            if (*kh, *kw) == (h, w) {
                return Ok(start.clone());
            }
        }
        let config = self.config;
        let (stride, padding, k) = (config.stride, config.padding, self.kernel);
        let out = |size: usize| (size + 2 * padding - k) / stride + 1;
        let (h_out, w_out) = (out(h), out(w));
        // The taps of output row `y` inside the input: ky in start..end.
        let inside = |y: usize, size: usize| {
            let top = (y * stride) as isize - padding as isize;
            let start = (-top).clamp(0, k as isize) as usize;
            let end = (size as isize - top).clamp(0, k as isize) as usize;
            (start, end.max(start))
        };
        let side = k + 1;
        let mut values = vec![0f32; self.c_out * h_out * w_out];
        for (o, plane) in values.chunks_mut(h_out * w_out).enumerate() {
            let sums = &self.offset_sums[o * side * side..][..side * side];
            let at = |y: usize, x: usize| sums[y * side + x];
            for oy in 0..h_out {
                let (y0, y1) = inside(oy, h);
                for ox in 0..w_out {
                    let (x0, x1) = inside(ox, w);
                    let border = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0);
                    plane[oy * w_out + ox] = self.bias[o] + border;
                }
            }
        }
        let start = Arc::new(values);
        *kept = Some(((h, w), start.clone()));
        Ok(start)
    }
}

/// Per output channel, the (K + 1, K + 1) table of sums of `taps` (C_out, K, K) above and left
/// of each corner: any rectangle of taps is then four lookups.
fn running_sums(taps: &[f32], c_out: usize, k: usize) -> Vec<f32> {
    let side = k + 1;
    let mut sums = vec![0f32; c_out * side * side];
    for o in 0..c_out {
        let table = &mut sums[o * side * side..][..side * side];
        for y in 0..k {
            for x in 0..k {
                table[(y + 1) * side + x + 1] =
                    taps[(o * k + y) * k + x] + table[y * side + x + 1] + table[(y + 1) * side + x]
                        - table[y * side + x];
            }
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv_infer::conv2d_infer;
    use crate::test_util::max_diff_and_scale;
    use candle_core::Device;
    use candle_nn::Conv2dConfig;

    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];

    fn spread(i: usize, seed: usize) -> f32 {
        (((i * 2_654_435_761 + seed) >> 5) % 1000) as f32 / 1000.0
    }

    /// A stem-like folded convolution: (5, 3, 7, 7), stride 2, padding 3, with a bias.
    fn stem() -> Conv2d {
        let weight: Vec<f32> = (0..5 * 3 * 49).map(|i| spread(i, 1) - 0.5).collect();
        let bias: Vec<f32> = (0..5).map(|i| spread(i, 2) - 0.5).collect();
        let config = Conv2dConfig {
            padding: 3,
            stride: 2,
            ..Default::default()
        };
        Conv2d::new(
            Tensor::from_vec(weight, (5, 3, 7, 7), &Device::Cpu).unwrap(),
            Some(Tensor::from_vec(bias, 5, &Device::Cpu).unwrap()),
            config,
        )
    }

    /// `n` grey images of (h, w), normalised per channel as the preprocessing does.
    fn grey(n: usize, h: usize, w: usize) -> Tensor {
        let mut values = Vec::with_capacity(n * 3 * h * w);
        for i in 0..n {
            let plane: Vec<f32> = (0..h * w).map(|p| spread(p, i + 3)).collect();
            for c in 0..3 {
                values.extend(plane.iter().map(|v| (v - MEAN[c]) / STD[c]));
            }
        }
        Tensor::from_vec(values, (n, 3, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_grey_image_gets_the_three_channel_stems_output() {
        let stem = stem();
        let stem_infer = InferenceStem::new(&stem, MEAN, STD).unwrap();
        // Odd and even sizes (the last output row's taps end inside or on the border), a batch,
        // and a second size after the first (the kept border term is replaced).
        for (n, h, w) in [(1, 13, 11), (2, 16, 9), (1, 13, 11), (1, 7, 20)] {
            let x = grey(n, h, w);
            let wanted = conv2d_infer(&x, &stem, None, None, true).unwrap();
            let got = stem_infer.forward(&x).unwrap().expect("a grey image");
            assert_eq!(got.dims(), wanted.dims());
            let (diff, _) = max_diff_and_scale(&got, &wanted);
            assert!(diff < 1e-4, "{n}x{h}x{w}: largest difference {diff}");
        }
    }

    #[test]
    fn a_colour_image_gets_the_three_channel_kernel_and_a_gradient_the_training_op() {
        let stem = stem();
        let stem_infer = InferenceStem::new(&stem, MEAN, STD).unwrap();
        let x = grey(2, 10, 10);
        // The second image's blue channel moved by one 8-bit step at one pixel: the first image
        // stays grey, the second takes the three-channel kernel; both match the full stem.
        let mut values: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        values[3 * 100 + 2 * 100 + 57] += 1.0 / 255.0 / STD[2];
        let coloured = Tensor::from_vec(values, (2, 3, 10, 10), &Device::Cpu).unwrap();
        let wanted = conv2d_infer(&coloured, &stem, None, None, true).unwrap();
        let got = stem_infer
            .forward(&coloured)
            .unwrap()
            .expect("a colour image");
        let (diff, _) = max_diff_and_scale(&got, &wanted);
        assert!(diff < 1e-4, "largest difference {diff}");
        let tracked = candle_core::Var::from_tensor(&x).unwrap();
        assert!(stem_infer.forward(tracked.as_tensor()).unwrap().is_none());
    }
}
