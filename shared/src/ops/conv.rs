//! Training-mode convolution as one CPU op: im2col and gemm over groups of images, the groups in
//! parallel.
//!
//! candle's CPU backward of `conv2d` runs a direct (loop) `conv_transpose2d`. Building the
//! im2col from tensor ops instead (the form other devices still use, `conv2d_by_matmul`) makes
//! autograd keep a patch tensor k*k times the input per layer and copy it, single-threaded, on
//! every pass. This op keeps only its input and weight, rebuilds the patches group by group in the
//! backward pass, and runs every product through gemm. It computes what `Conv2d::forward`
//! computes for the convolutions ResNet50 has: square kernel, no bias, no groups, dilation 1.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use rayon::prelude::*;

use crate::ops::cpu_slice::contiguous_f32;
use crate::ops::matmul::{matmul, Matrix};
use crate::ops::strided_view;

/// `conv`'s forward in training mode: the fused op for f32 on the CPU, explicit im2col and one
/// matmul (whose backward is matmuls too) elsewhere.
/// (N, C_in, H, W) -> (N, C_out, H_out, W_out)
pub fn conv2d_train(x: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    let config = *conv.config();
    let fusable = matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && conv.bias().is_none()
        && config.groups == 1
        && config.dilation == 1;
    if !fusable {
        return conv2d_by_matmul(x, conv);
    }
    let geometry = Geometry::new(x.dims4()?, conv.weight().dims4()?, config)?;
    x.contiguous()?
        .apply_op2(&conv.weight().contiguous()?, Conv2dTrain(geometry))
}

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    pub(super) c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    pub(super) fn new(
        (batch, c_in, h, w): (usize, usize, usize, usize),
        (c_out, c_in_k, k, k_w): (usize, usize, usize, usize),
        config: Conv2dConfig,
    ) -> Result<Self> {
        let Conv2dConfig {
            padding, stride, ..
        } = config;
        if c_in_k != c_in || k_w != k || h + 2 * padding < k || w + 2 * padding < k || stride == 0 {
            candle_core::bail!(
                "conv2d: input (N, {c_in}, {h}, {w}) does not fit weight ({c_out}, {c_in_k}, {k}, {k_w}) with padding {padding}, stride {stride}"
            );
        }
        Ok(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            k,
            stride,
            padding,
            out_h: (h + 2 * padding - k) / stride + 1,
            out_w: (w + 2 * padding - k) / stride + 1,
        })
    }

    /// Values in one image of the input.
    pub(super) fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Output positions per channel, the columns of the patch matrix.
    pub(super) fn positions(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Values in one patch, the rows of the patch matrix (and the columns of the flat weight).
    pub(super) fn patch_len(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// Channels of the input.
    pub(super) fn c_in(&self) -> usize {
        self.c_in
    }

    /// Channels-last patches of output positions `positions`: (H, W, C_in) ->
    /// (positions.len(), k*k*C_in), row i the window of output position `positions.start + i` in
    /// (ky, kx, c) order, zero in the padding. A 1x1 stride-1 convolution's are the image's own
    /// rows, returned without a copy.
    pub(super) fn patch_rows<'a, T: Copy + Default>(
        &self,
        hwc: &'a [T],
        positions: std::ops::Range<usize>,
        scratch: &'a mut Vec<T>,
    ) -> &'a [T] {
        let (c, k) = (self.c_in, self.k);
        if self.is_pointwise() {
            return &hwc[positions.start * c..positions.end * c];
        }
        scratch.clear();
        scratch.resize(positions.len() * k * k * c, T::default());
        for (p, row) in positions.zip(scratch.chunks_mut(k * k * c)) {
            let (out_y, out_x) = (p / self.out_w, p % self.out_w);
            for ky in 0..k {
                let Some(y) = self.input_row(ky, out_y) else {
                    continue;
                };
                for kx in 0..k {
                    let x = (out_x * self.stride + kx).checked_sub(self.padding);
                    if let Some(x) = x.filter(|&x| x < self.w) {
                        let start = (y * self.w + x) * c;
                        row[(ky * k + kx) * c..][..c].copy_from_slice(&hwc[start..start + c]);
                    }
                }
            }
        }
        scratch
    }

    /// A 1x1, stride-1, unpadded convolution: its patch matrix is the image itself.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    fn weight(&self) -> Shape {
        Shape::from((self.c_out, self.c_in, self.k, self.k))
    }

    pub(super) fn output(&self) -> Shape {
        Shape::from((self.batch, self.c_out, self.out_h, self.out_w))
    }

    fn input(&self) -> Shape {
        Shape::from((self.batch, self.c_in, self.h, self.w))
    }

    /// The input row that kernel row `ky` reads for output row `out_y` (`None` in the padding).
    fn input_row(&self, ky: usize, out_y: usize) -> Option<usize> {
        (out_y * self.stride + ky)
            .checked_sub(self.padding)
            .filter(|&y| y < self.h)
    }

    /// The output columns at which kernel column `kx` reads inside the image (not the padding).
    fn valid_cols(&self, kx: usize) -> Range<usize> {
        let first = (self.padding.saturating_sub(kx).div_ceil(self.stride)).min(self.out_w);
        let end = match (self.w + self.padding).checked_sub(kx + 1) {
            Some(last_reach) => (last_reach / self.stride + 1).min(self.out_w),
            None => 0,
        };
        first..end.max(first)
    }

    /// Visits one output row of one patch-matrix row of the input channels `channels` at a time:
    /// the patch-matrix row, the column at which the output row starts, and, for the columns in
    /// `valid`, the offset of the first input value it reads (the next ones follow at `stride`);
    /// `None` where it reads only padding. Plain loops, not an iterator chain: im2col runs once
    /// per convolution and image, and nested `flat_map`s cost it a third of the time of its gemm
    /// (perf).
    fn for_each_segment(&self, channels: Range<usize>, mut visit: impl FnMut(Segment)) {
        for c in channels {
            for ky in 0..self.k {
                for kx in 0..self.k {
                    let row = (c * self.k + ky) * self.k + kx;
                    let valid = self.valid_cols(kx);
                    for out_y in 0..self.out_h {
                        let input =
                            self.input_row(ky, out_y)
                                .filter(|_| !valid.is_empty())
                                .map(|y| {
                                    (c * self.h + y) * self.w + valid.start * self.stride + kx
                                        - self.padding
                                });
                        visit(Segment {
                            row,
                            col: out_y * self.out_w,
                            input,
                            valid: valid.clone(),
                        });
                    }
                }
            }
        }
    }

    /// (C_in, H, W) -> (C_in*k*k, H_out*W_out), rows `pitch` apart in `patches`: column p holds
    /// the window of output position p, in the (c, ky, kx) order of the weight's flattening.
    /// Writes the rows of the input channels `channels` only, `patches` starting at the first.
    fn im2col(&self, image: &[f32], channels: Range<usize>, patches: &mut [f32], pitch: usize) {
        let first_row = channels.start * self.k * self.k;
        self.for_each_segment(channels, |segment| {
            let start = (segment.row - first_row) * pitch + segment.col;
            let row = &mut patches[start..start + self.out_w];
            let Some(input) = segment.input else {
                row.fill(0.0);
                return;
            };
            row[..segment.valid.start].fill(0.0);
            row[segment.valid.end..].fill(0.0);
            let row = &mut row[segment.valid];
            if self.stride == 1 {
                row.copy_from_slice(&image[input..input + row.len()]);
            } else {
                let source = image[input..].iter().step_by(self.stride);
                for (value, &pixel) in row.iter_mut().zip(source) {
                    *value = pixel;
                }
            }
        });
    }

    /// The adjoint of `im2col`: every patch entry added back onto the input value it came from.
    fn col2im(&self, patches: &[f32], pitch: usize, image: &mut [f32]) {
        image.fill(0.0);
        self.for_each_segment(0..self.c_in, |segment| {
            let Some(input) = segment.input else {
                return;
            };
            let start = segment.row * pitch + segment.col;
            let row = &patches[start..start + self.out_w];
            let target = image[input..].iter_mut().step_by(self.stride);
            for (pixel, &value) in target.zip(&row[segment.valid]) {
                *pixel += value;
            }
        });
    }

    /// Images per product: enough for `MIN_COLUMNS` columns (a 4x4 layer4 map alone would make
    /// a 16-column product that reads the whole weight for little work), but no more than leaves
    /// every thread a share of the batch.
    fn group_len(&self) -> usize {
        let per_thread = self.batch.div_ceil(rayon::current_num_threads());
        MIN_COLUMNS
            .div_ceil(self.positions())
            .min(per_thread)
            .max(1)
    }

    /// The wide patch matrix (C_in*k*k, n*H_out*W_out) of a group of `n` images; a pointwise
    /// convolution's single image is its own patch matrix. `threads` share the copying, each a
    /// block of input channels (inference builds one image's matrix while the other cores wait
    /// for it; training already runs one group per thread and passes 1).
    pub(super) fn group_patches<'a>(
        &self,
        images: &'a [f32],
        scratch: &'a mut Vec<f32>,
        threads: usize,
    ) -> &'a [f32] {
        if self.is_pointwise() {
            return to_wide(images, self.c_in, self.positions(), scratch);
        }
        let pitch = images.len() / self.in_len() * self.positions();
        scratch.resize(self.patch_len() * pitch, 0.0);
        // A few blocks per thread, so that uneven blocks (the stem's 3 channels) still balance.
        let channels_per_block = self.c_in.div_ceil(threads * 4).max(1);
        let block_len = channels_per_block * self.k * self.k * pitch;
        let fill_block = |(b, block): (usize, &mut [f32])| {
            let first = b * channels_per_block;
            let channels = first..(first + channels_per_block).min(self.c_in);
            for (i, image) in images.chunks(self.in_len()).enumerate() {
                self.im2col(
                    image,
                    channels.clone(),
                    &mut block[i * self.positions()..],
                    pitch,
                );
            }
        };
        if threads > 1 {
            scratch
                .par_chunks_mut(block_len)
                .enumerate()
                .for_each(fill_block);
        } else {
            scratch
                .chunks_mut(block_len)
                .enumerate()
                .for_each(fill_block);
        }
        scratch
    }
}

/// One output row of one patch-matrix row (see `Geometry::segments`).
struct Segment {
    row: usize,
    col: usize,
    input: Option<usize>,
    valid: Range<usize>,
}

/// Fewest columns a product should have (see `Geometry::group_len`).
const MIN_COLUMNS: usize = 256;

/// (n, rows, P) -> (rows, n*P): a group of images side by side, image i in column block i, so
/// that one product serves them all. One image is already that matrix and is not copied.
fn to_wide<'a>(
    images: &'a [f32],
    rows: usize,
    positions: usize,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let pitch = images.len() / rows;
    if pitch == positions {
        return images;
    }
    scratch.resize(images.len(), 0.0);
    for (i, image) in images.chunks(rows * positions).enumerate() {
        for (r, row) in image.chunks(positions).enumerate() {
            scratch[r * pitch + i * positions..][..positions].copy_from_slice(row);
        }
    }
    scratch
}

/// Writes the product `lhs @ rhs`, a wide (rows, n*P) matrix, into `images` as (n, rows, P):
/// directly for one image, through `scratch` for more.
fn matmul_into_images(
    lhs: Matrix,
    rhs: Matrix,
    positions: usize,
    images: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    if rhs.cols == positions {
        matmul(images, lhs, rhs, false);
        return;
    }
    scratch.resize(lhs.rows * rhs.cols, 0.0);
    matmul(scratch, lhs, rhs, false);
    for (i, image) in images.chunks_mut(lhs.rows * positions).enumerate() {
        for (r, row) in image.chunks_mut(positions).enumerate() {
            row.copy_from_slice(&scratch[r * rhs.cols + i * positions..][..positions]);
        }
    }
}

/// The forward op; its backward runs `Conv2dGradInput` and `Conv2dGradWeight`.
struct Conv2dTrain(Geometry);

impl CustomOp2 for Conv2dTrain {
    fn name(&self) -> &'static str {
        "conv2d-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(s1, l1)?;
        let weight = Matrix::row_major(contiguous_f32(s2, l2)?, g.c_out, g.patch_len());
        let out_len = g.c_out * g.positions();
        let mut y = vec![0f32; g.batch * out_len];
        y.par_chunks_mut(g.group_len() * out_len)
            .zip(x.par_chunks(g.group_len() * g.in_len()))
            .for_each(|(y, images)| {
                let (mut scratch, mut out_scratch) = (Vec::new(), Vec::new());
                let patches = g.group_patches(images, &mut scratch, 1);
                let cols = patches.len() / g.patch_len();
                let patches = Matrix::row_major(patches, g.patch_len(), cols);
                matmul_into_images(weight, patches, g.positions(), y, &mut out_scratch);
            });
        Ok((CpuStorage::F32(y), g.output()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The network's input image needs no gradient: its (large) product is skipped.
        let grad_x = match x.track_op() {
            true => Some(grad.apply_op2_no_bwd(weight, &Conv2dGradInput(self.0))?),
            false => None,
        };
        // A frozen weight (an attribution map's backward pass) needs none either.
        let grad_weight = match weight.track_op() {
            true => Some(x.apply_op2_no_bwd(&grad, &Conv2dGradWeight(self.0))?),
            false => None,
        };
        Ok((grad_x, grad_weight))
    }
}

/// (grad of the output, weight) -> grad of the input: col2im(W^T @ dY).
pub(super) fn conv2d_grad_input(
    grad: &Tensor,
    weight: &Tensor,
    geometry: Geometry,
) -> Result<Tensor> {
    grad.contiguous()?
        .apply_op2_no_bwd(weight, &Conv2dGradInput(geometry))
}

struct Conv2dGradInput(Geometry);

impl CustomOp2 for Conv2dGradInput {
    fn name(&self) -> &'static str {
        "conv2d-train-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let grad = contiguous_f32(s1, l1)?;
        let weight_t = Matrix::row_major(contiguous_f32(s2, l2)?, g.c_out, g.patch_len()).t();
        let out_len = g.c_out * g.positions();
        let mut grad_x = vec![0f32; g.batch * g.in_len()];
        grad_x
            .par_chunks_mut(g.group_len() * g.in_len())
            .zip(grad.par_chunks(g.group_len() * out_len))
            .for_each(|(grad_x, grad)| {
                let (mut wide_scratch, mut scratch) = (Vec::new(), Vec::new());
                let wide = to_wide(grad, g.c_out, g.positions(), &mut wide_scratch);
                let cols = wide.len() / g.c_out;
                let wide = Matrix::row_major(wide, g.c_out, cols);
                if g.is_pointwise() {
                    matmul_into_images(weight_t, wide, g.positions(), grad_x, &mut scratch);
                    return;
                }
                scratch.resize(g.patch_len() * cols, 0.0);
                matmul(&mut scratch, weight_t, wide, false);
                for (i, image) in grad_x.chunks_mut(g.in_len()).enumerate() {
                    g.col2im(&scratch[i * g.positions()..], cols, image);
                }
            });
        Ok((CpuStorage::F32(grad_x), g.input()))
    }
}

/// (input, grad of the output) -> grad of the weight: dY @ patches^T, summed over the groups.
struct Conv2dGradWeight(Geometry);

impl CustomOp2 for Conv2dGradWeight {
    fn name(&self) -> &'static str {
        "conv2d-train-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(s1, l1)?;
        let grad = contiguous_f32(s2, l2)?;
        let out_len = g.c_out * g.positions();
        let weight_len = g.c_out * g.patch_len();
        let sum = x
            .par_chunks(g.group_len() * g.in_len())
            .zip(grad.par_chunks(g.group_len() * out_len))
            .fold(
                || (vec![0f32; weight_len], Vec::new(), Vec::new()),
                |(mut sum, mut scratch, mut wide_scratch), (images, grad)| {
                    let patches = g.group_patches(images, &mut scratch, 1);
                    let wide = to_wide(grad, g.c_out, g.positions(), &mut wide_scratch);
                    let cols = wide.len() / g.c_out;
                    let patches = Matrix::row_major(patches, g.patch_len(), cols);
                    let wide = Matrix::row_major(wide, g.c_out, cols);
                    matmul(&mut sum, wide, patches.t(), true);
                    (sum, scratch, wide_scratch)
                },
            )
            .map(|(sum, ..)| sum)
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
            .unwrap_or_else(|| vec![0f32; weight_len]);
        Ok((CpuStorage::F32(sum), g.weight()))
    }
}

/// The convolution as explicit im2col from tensor ops and one matmul: the training form for
/// devices other than the CPU, where candle's own `conv2d` backward would be a direct loop.
/// (N, C_in, H, W) -> (N, C_out, H_out, W_out)
fn conv2d_by_matmul(x: &Tensor, conv: &Conv2d) -> Result<Tensor> {
    let weight = conv.weight();
    let Geometry {
        batch: n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        padding,
        out_h,
        out_w,
    } = Geometry::new(x.dims4()?, weight.dims4()?, *conv.config())?;
    let columns = if k == 1 && stride == 1 {
        x.reshape((n, c_in, h * w))?
    } else {
        // Extra bottom/right zeros so every strided view can fold `stride * out` rows; they never
        // fall inside a real window.
        let x = x
            .pad_with_zeros(2, padding, padding + stride - 1)?
            .pad_with_zeros(3, padding, padding + stride - 1)?;
        let mut patches = Vec::with_capacity(k * k);
        for ky in 0..k {
            for kx in 0..k {
                patches.push(strided_view(&x, (ky, kx), (out_h, out_w), stride)?);
            }
        }
        // (N, C_in, k*k, H_out, W_out): the (c, ky, kx) order of the weight's flattening.
        Tensor::stack(&patches, 2)?.reshape((n, c_in * k * k, out_h * out_w))?
    };
    let weight = weight.reshape((c_out, c_in * k * k))?;
    let y = weight
        .broadcast_matmul(&columns)?
        .reshape((n, c_out, out_h, out_w))?;
    match conv.bias() {
        Some(bias) => y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grads_of, max_diff_and_scale};
    use candle_core::Var;

    /// The blocks of input channels that threads fill make the same patch matrix as one thread,
    /// for a group of images, the stem's 3 channels and a channel count no block size divides.
    #[test]
    fn patches_are_the_same_however_many_threads_build_them() {
        for (batch, c_in, size, k, stride) in [(2, 3, 15, 7, 2), (1, 13, 9, 3, 1), (3, 8, 10, 3, 2)]
        {
            let config = Conv2dConfig {
                padding: k / 2,
                stride,
                ..Default::default()
            };
            let g = Geometry::new((batch, c_in, size, size), (4, c_in, k, k), config).unwrap();
            let images: Vec<f32> = (0..batch * g.in_len()).map(|i| i as f32 + 1.0).collect();
            let one = g.group_patches(&images, &mut Vec::new(), 1).to_vec();
            assert!(one.contains(&0.0) && one.iter().any(|&v| v > 0.0));
            for threads in [2, 3, 8] {
                let many = g.group_patches(&images, &mut Vec::new(), threads).to_vec();
                assert_eq!(
                    many, one,
                    "c_in {c_in} k {k} stride {stride} threads {threads}"
                );
            }
        }
    }

    #[test]
    fn patch_rows_are_the_channels_last_transpose_of_the_patch_matrix() {
        for (c_in, size, k, stride) in [
            (3, 15, 7, 2),
            (13, 9, 3, 1),
            (8, 10, 3, 2),
            (5, 6, 1, 2),
            (6, 5, 1, 1),
        ] {
            let config = Conv2dConfig {
                padding: k / 2,
                stride,
                ..Default::default()
            };
            let g = Geometry::new((1, c_in, size, size), (4, c_in, k, k), config).unwrap();
            let image: Vec<f32> = (0..g.in_len()).map(|i| i as f32 + 1.0).collect();
            let hwc: Vec<f32> = (0..g.in_len())
                .map(|i| image[(i % c_in) * size * size + i / c_in])
                .collect();
            let columns = g.group_patches(&image, &mut Vec::new(), 1).to_vec();
            let (positions, windows) = (g.positions(), k * k);
            let rows = g.patch_rows(&hwc, 0..positions, &mut Vec::new()).to_vec();
            assert_eq!(rows.len(), columns.len());
            // A band of positions gives the same rows as the whole.
            let band = positions / 3..positions - 1;
            let band_rows = g.patch_rows(&hwc, band.clone(), &mut Vec::new()).to_vec();
            assert_eq!(
                band_rows,
                rows[band.start * g.patch_len()..band.end * g.patch_len()]
            );
            for p in 0..positions {
                for window in 0..windows {
                    for c in 0..c_in {
                        assert_eq!(
                            rows[p * g.patch_len() + window * c_in + c],
                            columns[(c * windows + window) * positions + p],
                            "k {k} stride {stride} position {p}"
                        );
                    }
                }
            }
        }
    }

    /// The fused op's output and both gradients against candle's own `conv2d` and its autograd.
    fn check(batch: usize, c_in: usize, size: usize, c_out: usize, k: usize, stride: usize) {
        let padding = k / 2;
        let device = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (batch, c_in, size, size), &device).unwrap();
        let weight = Var::randn(0f32, 0.5, (c_out, c_in, k, k), &device).unwrap();
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let conv = Conv2d::new(weight.as_tensor().clone(), None, config);
        let fused = conv2d_train(x.as_tensor(), &conv).unwrap();
        let reference = x
            .as_tensor()
            .conv2d(weight.as_tensor(), padding, stride, 1, 1)
            .unwrap();
        assert_eq!(fused.dims(), reference.dims());
        let upstream = Tensor::randn(0f32, 1.0, reference.shape(), &device).unwrap();
        let inputs = [x.as_tensor(), weight.as_tensor()];
        let fused_grads = grads_of(&fused, &upstream, &inputs);
        let reference_grads = grads_of(&reference, &upstream, &inputs);
        let pairs = [("output", &fused, &reference)].into_iter().chain(
            ["input grad", "weight grad"]
                .into_iter()
                .zip(fused_grads.iter().zip(&reference_grads))
                .map(|(what, (a, b))| (what, a, b)),
        );
        for (what, a, b) in pairs {
            let (diff, scale) = max_diff_and_scale(a, b);
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "k {k} stride {stride}: {what} differs by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn matches_candle_conv2d_and_its_gradients_for_resnet_geometries() {
        check(3, 4, 9, 5, 1, 1); // bottleneck reduce/expand
        check(3, 4, 9, 5, 1, 2); // downsample
        check(3, 4, 9, 5, 3, 1); // 3x3
        check(3, 4, 9, 5, 3, 2); // strided 3x3, odd size
        check(2, 3, 16, 4, 7, 2); // stem
        check(1, 2, 4, 3, 3, 2); // a single image
        check(1, 2, 1, 3, 7, 2); // windows mostly in the padding
        check(2, 2, 2, 3, 3, 2);
    }

    #[test]
    fn input_without_gradient_gets_none() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &device).unwrap();
        let weight = Var::randn(0f32, 1.0, (4, 3, 3, 3), &device).unwrap();
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(weight.as_tensor().clone(), None, config);
        let grads = conv2d_train(&x, &conv)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert_eq!(grads.get(weight.as_tensor()).unwrap().dims(), &[4, 3, 3, 3]);
    }

    #[test]
    fn a_convolution_with_bias_takes_the_tensor_op_path_and_keeps_its_bias() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &device).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &device).unwrap();
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(weight, Some(bias), config);
        let (diff, _) = max_diff_and_scale(
            &conv2d_train(&x, &conv).unwrap(),
            &candle_core::Module::forward(&conv, &x).unwrap(),
        );
        assert!(diff < 1e-4, "differs by {diff}");
    }

    #[test]
    fn mismatched_weight_is_an_error() {
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let weight = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let conv = Conv2d::new(weight, None, Conv2dConfig::default());
        assert!(conv2d_train(&x, &conv).is_err());
    }
}
