//! The inference convolution's product in int8: the input quantized per image to 7-bit codes
//! with one scale, the folded weight to int8 codes with one scale per output channel, their
//! product summed exactly in i32 (natively by rten-gemm's int8 kernels, in the page by
//! `int8_rows`), and scaled back to f32 onto the output's bias (and residual).
//!
//! The codes are laid out channels-last, (H, W, C), so that each output position's patch is
//! one contiguous row, the layout the kernel packs fastest (read transposed from channels-first
//! patches, packing cost more than the product at 44x44); the weight's columns are put in the
//! same (ky, kx, c) order once, when it is quantized. The transposing quantizer runs sixteen
//! channels by sixteen positions at a time in vector registers (`quantize_tile`).
//!
//! Only inputs without negative values take this path (every convolution after a ReLU, that is
//! all but the stem), so the codes need no zero point. 7 bits, not 8: AVX2 without VNNI sums
//! pairs of u8 x i8 products in 16 bits (`vpmaddubsw`), which 2 x 255 x 127 overflows and
//! 2 x 127 x 127 does not, and every machine must compute the same sums.

use candle_nn::Conv2d;
#[cfg(not(target_arch = "wasm32"))]
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmUninitOptions, PackedBMatrix};
#[cfg(not(target_arch = "wasm32"))]
use rten_tensor::NdTensorView;

use crate::float::smaller;
use crate::ops::for_each_chunk_mut;
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "wasm32", target_feature = "simd128")
))]
use crate::ops::quantize_tile::quantize_tile;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use crate::ops::quantize_tile::Simd128 as Tiles;
#[cfg(target_arch = "x86_64")]
use crate::ops::quantize_tile::Sse2 as Tiles;
use crate::ops::quantize_tile::TILE;
use crate::quantize::quantize_rows;

/// The largest activation code.
const ACTIVATION_MAX: f32 = 127.0;

#[cfg(not(target_arch = "wasm32"))]
type Int8Gemm = GemmExecutor<u8, i8, i32>;

/// A folded convolution weight as int8 codes, laid out for the kernel once.
pub struct Int8Weight {
    /// The codes' (patch_len, c_out) transpose, the product's right-hand side, prepacked.
    #[cfg(not(target_arch = "wasm32"))]
    packed: PackedBMatrix<i8>,
    /// The (c_out, patch_len) codes, as `int8_rows` reads them.
    #[cfg(target_arch = "wasm32")]
    rows: Vec<i8>,
    patch_len: usize,
    /// Per output channel.
    scales: Vec<f32>,
}

impl std::fmt::Debug for Int8Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Weight")
            .field("c_out", &self.scales.len())
            .field("patch_len", &self.patch_len)
            .finish()
    }
}

impl Int8Weight {
    /// `weight`: the (c_out, c_in, k, k) kernel, row-major.
    pub fn new(weight: &[f32], (c_out, c_in, k): (usize, usize, usize)) -> Self {
        let patch_len = c_in * k * k;
        assert_eq!(weight.len(), c_out * patch_len);
        // (c, ky, kx) -> (ky, kx, c) within each output channel's row (the same for 1x1).
        let (codes, scales) = if k == 1 {
            quantize_rows(weight, c_out)
        } else {
            let mut channels_last = vec![0f32; weight.len()];
            for (row, out) in weight
                .chunks(patch_len)
                .zip(channels_last.chunks_mut(patch_len))
            {
                for c in 0..c_in {
                    for window in 0..k * k {
                        out[window * c_in + c] = row[c * k * k + window];
                    }
                }
            }
            quantize_rows(&channels_last, c_out)
        };
        Self {
            #[cfg(not(target_arch = "wasm32"))]
            packed: {
                let transposed = NdTensorView::from_data_with_strides(
                    [patch_len, c_out],
                    &codes[..],
                    [1, patch_len],
                )
                .expect("the codes hold c_out x patch_len values");
                Int8Gemm::default().prepack_b(transposed)
            },
            #[cfg(target_arch = "wasm32")]
            rows: codes,
            patch_len,
            scales,
        }
    }

    /// The codes of a convolution's weight.
    pub fn of_conv(conv: &Conv2d) -> candle_core::Result<Self> {
        let (c_out, c_in, k, _) = conv.weight().dims4()?;
        let weight: Vec<f32> = conv.weight().flatten_all()?.to_vec1()?;
        Ok(Self::new(&weight, (c_out, c_in, k)))
    }

    pub fn c_out(&self) -> usize {
        self.scales.len()
    }

    pub fn patch_len(&self) -> usize {
        self.patch_len
    }
}

/// The largest of `values`, or `None` when one is negative, NaN or infinite.
fn largest_usable(values: &[f32]) -> Option<f32> {
    // On bit patterns: a non-negative finite f32 orders as its bits do, and every negative
    // value (sign bit), infinity and NaN has bits at or above +infinity's. An integer maximum
    // vectorises (a float one did not natively: 0.7 ns per value). -0.0 counts as 0.
    const NEGATIVE_ZERO: u32 = 0x8000_0000;
    let highest = values
        .iter()
        .map(|v| match v.to_bits() {
            NEGATIVE_ZERO => 0,
            bits => bits,
        })
        .fold(0, u32::max);
    (highest < f32::INFINITY.to_bits()).then(|| f32::from_bits(highest))
}

/// A (C, H, W) image's values as (H, W, C) 7-bit codes and their scale, or `None` when one is
/// negative (or not finite): then the caller computes in f32.
pub fn quantize_activations(image: &[f32], channels: usize, codes: &mut Vec<u8>) -> Option<f32> {
    let scale = match largest_usable(image)? {
        largest if largest > 0.0 => largest / ACTIVATION_MAX,
        _ => 1.0,
    };
    let inverse = 1.0 / scale;
    let positions = image.len() / channels.max(1);
    codes.clear();
    codes.resize(image.len(), 0);
    // A block of positions at a time, so that the rows written stay in cache.
    const BLOCK: usize = 2 * TILE;
    for_each_chunk_mut(codes, BLOCK * channels, |block, codes| {
        let first = block * BLOCK;
        let end = first + codes.len() / channels.max(1);
        quantize_block(image, positions, first..end, inverse, codes, channels);
    });
    Some(scale)
}

/// Positions `range` of `image` ((C, positions) f32) as channels-last codes in `codes`.
fn quantize_block(
    image: &[f32],
    positions: usize,
    range: std::ops::Range<usize>,
    inverse: f32,
    codes: &mut [u8],
    channels: usize,
) {
    // Whole tiles of sixteen channels and positions through the vector kernel where there is one.
    let tiled = match cfg!(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )) && channels.is_multiple_of(TILE)
    {
        true => range.len() / TILE * TILE,
        false => 0,
    };
    #[cfg(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    ))]
    for (t, first) in (range.start..range.start + tiled).step_by(TILE).enumerate() {
        let out = &mut codes[t * TILE * channels..][..TILE * channels];
        for c0 in (0..channels).step_by(TILE) {
            // SAFETY: the tile's channels and positions lie inside `image`, its rows in `out`.
            unsafe {
                quantize_tile::<Tiles>(image, positions, (c0, first), inverse, out, channels)
            };
        }
    }
    // `+ 0.5` then truncation rounds these non-negative values as `round` would, without
    // libm's call per value; the tiles compute the same.
    let rest = range.start + tiled..range.end;
    let codes = &mut codes[tiled * channels..];
    for (c, plane) in image.chunks(positions).enumerate() {
        for (p, &v) in (0..).zip(&plane[rest.clone()]) {
            let code = smaller(v * inverse + 0.5, ACTIVATION_MAX);
            codes[p * channels + c] = code as u8;
        }
    }
}

/// `y += scale * (weight @ patches^T)`, `y` (c_out, positions) row-major, `patches` the
/// (positions, patch_len) row-major codes (`Geometry::patch_rows`) with activation scale
/// `scale`.
pub fn accumulate_product(y: &mut [f32], weight: &Int8Weight, patches: &[u8], scale: f32) {
    #[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
    crate::ops::int8_rows::accumulate_relaxed(y, &weight.rows, &weight.scales, patches, scale);
    #[cfg(all(target_arch = "wasm32", not(feature = "relaxed-simd")))]
    crate::ops::int8_rows::accumulate::<crate::ops::int8_rows::Simd128>(
        y,
        &weight.rows,
        &weight.scales,
        patches,
        scale,
    );
    #[cfg(not(target_arch = "wasm32"))]
    accumulate_with_rten(y, weight, patches, scale);
}

/// `accumulate_product` natively: rten-gemm's int8 kernels, then the (positions, c_out) sums
/// scaled onto the (c_out, positions) output.
#[cfg(not(target_arch = "wasm32"))]
fn accumulate_with_rten(y: &mut [f32], weight: &Int8Weight, patches: &[u8], scale: f32) {
    let (c_out, patch_len) = (weight.c_out(), weight.patch_len());
    let positions = patches.len() / patch_len.max(1);
    assert_eq!(y.len(), c_out * positions);
    let lhs = NdTensorView::from_data_with_strides([positions, patch_len], patches, [patch_len, 1])
        .expect("the patches hold positions x patch_len codes");
    // Written whole by the product: no zeroing first.
    let mut output = Vec::with_capacity(positions * c_out);
    // The executor is not Send, so the op cannot keep one; making one only picks the kernel
    // this CPU supports (the same each time, which the prepacked layout relies on).
    let sums: &[i32] = Int8Gemm::default()
        .gemm_uninit(
            &mut output.spare_capacity_mut()[..positions * c_out],
            GemmInputA::Unpacked(lhs),
            GemmInputB::Packed(&weight.packed),
            GemmUninitOptions::default(),
        )
        .expect("the product's shapes agree by construction");
    // (positions, c_out) sums -> the (c_out, positions) output, a block of positions at a time
    // so that the rows of sums it reads stay in cache; a band of channels per thread (this and
    // the quantizer on both threads: int8 / onnxruntime at 2 threads 1.43-1.77x against
    // 1.57-2.35x with one, three alternating runs of the inference bench).
    const BLOCK: usize = 16;
    let band = c_out.div_ceil(crate::ops::threads()).max(1);
    for_each_chunk_mut(y, band * positions, |b, y| {
        let first_channel = b * band;
        let scales = &weight.scales[first_channel..][..y.len() / positions];
        // Four channels x four positions at a time in registers where there are four of each.
        let tiled_channels = match cfg!(target_arch = "x86_64") {
            true => scales.len() / 4 * 4,
            false => 0,
        };
        for first in (0..positions).step_by(BLOCK) {
            let end = (first + BLOCK).min(positions);
            let tiled_end = first + (end - first) / 4 * 4;
            #[cfg(target_arch = "x86_64")]
            for i in (0..tiled_channels).step_by(4) {
                let factors = std::array::from_fn(|k| scale * scales[i + k]);
                for p in (first..tiled_end).step_by(4) {
                    let at = Tile4 {
                        channel: (i, first_channel + i),
                        position: p,
                    };
                    // SAFETY: channels i..i + 4 of this band and positions p..p + 4 exist.
                    unsafe { add_scaled_tile(y, positions, sums, c_out, at, factors) };
                }
            }
            for (i, &weight_scale) in scales.iter().enumerate() {
                let (c, factor) = (first_channel + i, scale * weight_scale);
                let rest = match i < tiled_channels {
                    true => tiled_end..end,
                    false => first..end,
                };
                let row = &mut y[i * positions..][rest.clone()];
                for (value, p) in row.iter_mut().zip(rest) {
                    *value += factor * sums[p * c_out + c] as f32;
                }
            }
        }
    });
}

/// Where a four-by-four tile of `add_scaled_tile` lies.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile4 {
    /// The first channel in the band's `y`, and in `sums`.
    channel: (usize, usize),
    position: usize,
}

/// `y[i + k][p..p + 4] += factors[k] * sums[p..p + 4][c + k]` for k in 0..4, as the scalar loop
/// computes it (a product, then a sum): the (positions, channels) sums transposed in registers.
///
/// # Safety
/// Rows `i..i + 4` of `y` ((channels, positions)) and positions `p..p + 4` exist, and `sums`
/// ((positions, c_out)) holds channels `c..c + 4` at those positions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_scaled_tile(
    y: &mut [f32],
    positions: usize,
    sums: &[i32],
    c_out: usize,
    Tile4 {
        channel: (i, c),
        position: p,
    }: Tile4,
    factors: [f32; 4],
) {
    use std::arch::x86_64::*;
    debug_assert!((i + 3) * positions + p + 4 <= y.len() && p + 4 <= positions);
    debug_assert!((p + 3) * c_out + c + 4 <= sums.len() && c + 4 <= c_out);
    let row = |k: usize| _mm_loadu_si128(sums.as_ptr().add((p + k) * c_out + c).cast());
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    // Unit pairs (position, channel): low (0,0) (1,0) (0,1) (1,1), high the same of 2 and 3.
    let (low01, low23) = (_mm_unpacklo_epi32(r0, r1), _mm_unpacklo_epi32(r2, r3));
    let (high01, high23) = (_mm_unpackhi_epi32(r0, r1), _mm_unpackhi_epi32(r2, r3));
    let channels = [
        _mm_unpacklo_epi64(low01, low23),
        _mm_unpackhi_epi64(low01, low23),
        _mm_unpacklo_epi64(high01, high23),
        _mm_unpackhi_epi64(high01, high23),
    ];
    for (k, (sums, factor)) in channels.into_iter().zip(factors).enumerate() {
        let dst = y.as_mut_ptr().add((i + k) * positions + p);
        let product = _mm_mul_ps(_mm_set1_ps(factor), _mm_cvtepi32_ps(sums));
        _mm_storeu_ps(dst, _mm_add_ps(_mm_loadu_ps(dst), product));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values in [-1, 1].
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn activations_become_channels_last_codes_unless_one_is_negative() {
        let mut codes = Vec::new();
        assert_eq!(quantize_activations(&[0.5, -0.1], 1, &mut codes), None);
        assert_eq!(quantize_activations(&[0.5, f32::NAN], 1, &mut codes), None);
        assert_eq!(
            quantize_activations(&[f32::INFINITY, 0.5], 1, &mut codes),
            None
        );
        // Past the eight lanes of the scan and in its remainder.
        let mut late = vec![0.25; 27];
        for at in [3, 17, 26] {
            late[at] = -1e-3;
            assert_eq!(quantize_activations(&late, 1, &mut codes), None, "{at}");
            late[at] = f32::NAN;
            assert_eq!(quantize_activations(&late, 1, &mut codes), None, "{at}");
            late[at] = 0.25;
        }
        late[20] = 2.54;
        assert!((quantize_activations(&late, 1, &mut codes).unwrap() - 0.02).abs() < 1e-7);
        // Two channels of three positions, channels-last out.
        let scale = quantize_activations(&[0.0, 0.5, 1.27, 0.01, 0.02, 0.03], 2, &mut codes);
        assert!((scale.unwrap() - 0.01).abs() < 1e-7);
        assert_eq!(codes, [0, 1, 50, 2, 127, 3]);
    }

    /// The vector tiles give the scalar definition's codes, channels-last, for channel counts
    /// that are and are not multiples of sixteen, positions that leave partial tiles and blocks,
    /// values on rounding boundaries, a -0.0 (counted as 0) and an all-zero image.
    #[test]
    fn tiled_codes_are_the_scalar_definitions() {
        let mut codes = Vec::new();
        for (channels, positions) in [(16, 16), (32, 121), (64, 44), (48, 7), (20, 40), (1, 33)] {
            let mut image: Vec<f32> = values(channels * positions, 7)
                .into_iter()
                .map(|v| v.abs() * 3.0)
                .collect();
            // The largest value sets a scale of about 0.03: then half a step and 1.5 steps.
            image[0] = 3.81;
            image[1] = 0.015;
            image[2] = 0.045;
            image[3] = -0.0;
            let scale = quantize_activations(&image, channels, &mut codes).unwrap();
            let inverse = 1.0 / scale;
            for (i, &v) in image.iter().enumerate() {
                let (c, p) = (i / positions, i % positions);
                let wanted = smaller(v * inverse + 0.5, ACTIVATION_MAX) as u8;
                assert_eq!(
                    codes[p * channels + c],
                    wanted,
                    "{channels}x{positions} at {c}, {p}"
                );
            }
        }
        let zeros = vec![0.0; 32 * 16];
        assert_eq!(quantize_activations(&zeros, 32, &mut codes), Some(1.0));
        assert!(codes.iter().all(|&c| c == 0));
    }

    #[test]
    fn the_int8_product_is_the_float_product_within_the_quantization_error() {
        let (c_out, patch_len, positions) = (37, 70, 53);
        let weight = values(c_out * patch_len, 1);
        let patches: Vec<f32> = values(patch_len * positions, 2)
            .into_iter()
            .map(|v| v.max(0.0))
            .collect();
        // A 1x1 convolution: the (patch_len, positions) patches are the image, and their
        // channels-last codes the kernel's rows.
        let mut codes = Vec::new();
        let scale = quantize_activations(&patches, patch_len, &mut codes).unwrap();
        let bias = 0.25;
        let mut y = vec![bias; c_out * positions];
        accumulate_product(
            &mut y,
            &Int8Weight::new(&weight, (c_out, patch_len, 1)),
            &codes,
            scale,
        );
        let mut largest_error = 0f32;
        for c in 0..c_out {
            for p in 0..positions {
                let exact: f32 = (0..patch_len)
                    .map(|k| weight[c * patch_len + k] * patches[k * positions + p])
                    .sum::<f32>()
                    + bias;
                largest_error = largest_error.max((y[c * positions + p] - exact).abs());
            }
        }
        // Each of the 70 products is off by at most half a step of either code (about 0.004
        // each, relative to values up to 1); rounding errors mostly cancel.
        assert!(largest_error < 0.05, "largest error {largest_error}");
        assert!(largest_error > 0.0, "an int8 product cannot be exact here");
    }

    /// The native product (rten-gemm, then its sums scaled onto the output four by four) gives
    /// the page kernel's bits: the answers of `trainer predict` and the page rest on it. Channel
    /// and position counts leave partial tiles, and more than one thread splits the channels.
    #[test]
    fn the_native_product_gives_the_page_kernels_bits() {
        for (c_out, patch_len, positions) in [(37, 64, 53), (64, 128, 16), (3, 16, 5)] {
            let weight = values(c_out * patch_len, 3);
            let image: Vec<f32> = values(patch_len * positions, 4)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let mut codes = Vec::new();
            let scale = quantize_activations(&image, patch_len, &mut codes).unwrap();
            let start: Vec<f32> = values(c_out * positions, 5);
            let mut native = start.clone();
            accumulate_product(
                &mut native,
                &Int8Weight::new(&weight, (c_out, patch_len, 1)),
                &codes,
                scale,
            );
            let (rows, scales) = quantize_rows(&weight, c_out);
            let mut page = start;
            crate::ops::int8_rows::accumulate::<crate::ops::int8_rows::Portable<16>>(
                &mut page, &rows, &scales, &codes, scale,
            );
            let same = native
                .iter()
                .zip(&page)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{c_out}x{patch_len}x{positions}: native and page differ"
            );
        }
    }
}
