//! The int8 product in the page: `y += scale * (weight @ patches^T)` from int8 weight rows and
//! 7-bit activation rows, both K-contiguous. Each output is the dot product of one weight row
//! and one patch row; nothing is packed: the weight rows are the model's codes, the activation
//! rows the convolution's patch rows.
//!
//! Two builds of the worker (`webapp/worker_loader.js` picks the one the browser validates):
//! - plain SIMD: `i32x4.dot_i16x8_s` (one `pmaddwd` on x86: eight products summed in pairs into
//!   four i32 lanes) on rows widened to 16 bits as they are loaded;
//! - with relaxed SIMD (feature `relaxed-simd`): `i32x4.relaxed_dot_i8x16_i7x16_add_s`, sixteen
//!   products of an int8 and a 7-bit value summed in fours into four i32 lanes, loaded as they
//!   are (`vpdpbusd` where the CPU has VNNI, else `pmaddubsw` + `pmaddwd`). The activations are
//!   7-bit codes (`conv_int8`), so every engine computes the exact sums: no pair of products
//!   reaches `pmaddubsw`'s 16-bit saturation (2 x 127 x 127 < 32767).
//!
//! rten-gemm's simd128 int8 kernel (what `conv_int8` uses natively) made the page slower than
//! f32 products (299.7 against 237.5 ms per image at 176 in Chromium 156): without relaxed
//! SIMD it emulates an int8 dot with six instructions per sixteen products and packs both
//! operands first.
//!
//! The arithmetic is written once over [`Dot`]; portable versions of both (the same lane-by-lane
//! sums) let the tests run it natively.

/// A multiply-accumulate of `WIDTH` weight codes and `WIDTH` activation codes into four i32 lanes.
pub(super) trait Dot {
    /// Codes consumed per `multiply_add`.
    const WIDTH: usize;
    /// `WIDTH` codes as loaded.
    type Loaded: Copy;
    /// Four partial sums.
    type Sums: Copy;

    fn zero() -> Self::Sums;
    /// `row[..WIDTH]`.
    fn weights(row: &[i8]) -> Self::Loaded;
    /// `row[..WIDTH]`.
    fn codes(row: &[u8]) -> Self::Loaded;
    /// `sums` plus the products of `weights` and `codes`, each product added to one lane.
    fn multiply_add(sums: Self::Sums, weights: Self::Loaded, codes: Self::Loaded) -> Self::Sums;
    /// The four lanes' total of each of four sums.
    fn totals(sums: [Self::Sums; 4]) -> [i32; 4];
}

/// Output channels per tile: four sums reduce together in [`Dot8::totals`].
const ROWS: usize = 4;
/// Positions per tile: with four weight rows, eight sums and six loaded rows stay in x86's
/// sixteen vector registers (three positions, twelve sums, took 209 against 178 ms per image
/// with the plain-SIMD kernel).
const COLS: usize = 2;
/// Bytes of patch rows one pass over the weight tiles reads: they stay in L2 while each tile's
/// weight rows stay in L1.
const PATCH_BLOCK_BYTES: usize = 96 << 10;

/// `y (c_out, positions) += scale * weight_scales[c] * (weights @ patches^T)`, `weights` the
/// (c_out, patch_len) codes and `patches` the (positions, patch_len) activation codes.
/// Inlined whole, so that [`accumulate_relaxed`] compiles every step with relaxed SIMD.
#[inline(always)]
pub(super) fn accumulate<D: Dot>(
    y: &mut [f32],
    weights: &[i8],
    weight_scales: &[f32],
    patches: &[u8],
    scale: f32,
) {
    let c_out = weight_scales.len();
    let patch_len = weights.len() / c_out.max(1);
    let positions = patches.len() / patch_len.max(1);
    assert_eq!(y.len(), c_out * positions);
    let factors: Vec<f32> = weight_scales.iter().map(|s| s * scale).collect();
    let operands = Operands {
        weights,
        patches,
        patch_len,
    };
    let block = (PATCH_BLOCK_BYTES / patch_len.max(1)).max(COLS) / COLS * COLS;
    for first in (0..positions).step_by(block) {
        let end = (first + block).min(positions);
        for (row, (y, factors)) in y
            .chunks_mut(ROWS * positions)
            .zip(factors.chunks(ROWS))
            .enumerate()
        {
            let out = Out {
                y,
                positions,
                factors,
            };
            let row = row * ROWS;
            match factors.len() {
                1 => out.columns::<D, 1>(operands, row, first..end),
                2 => out.columns::<D, 2>(operands, row, first..end),
                3 => out.columns::<D, 3>(operands, row, first..end),
                _ => out.columns::<D, ROWS>(operands, row, first..end),
            }
        }
    }
}

/// The product's two sides.
#[derive(Clone, Copy)]
struct Operands<'a> {
    weights: &'a [i8],
    patches: &'a [u8],
    patch_len: usize,
}

impl Operands<'_> {
    /// The exact i32 sums of weight rows `row..row + R` with patch rows `p..p + C`,
    /// `[position][row]`.
    #[inline(always)]
    fn sums<D: Dot, const R: usize, const C: usize>(self, row: usize, p: usize) -> [[i32; 4]; C] {
        let k = self.patch_len;
        let w: [&[i8]; R] = std::array::from_fn(|r| &self.weights[(row + r) * k..][..k]);
        let a: [&[u8]; C] = std::array::from_fn(|c| &self.patches[(p + c) * k..][..k]);
        let mut sums = [[D::zero(); R]; C];
        let whole = k / D::WIDTH * D::WIDTH;
        for at in (0..whole).step_by(D::WIDTH) {
            let w: [D::Loaded; R] = std::array::from_fn(|r| D::weights(&w[r][at..]));
            for c in 0..C {
                let codes = D::codes(&a[c][at..]);
                for r in 0..R {
                    sums[c][r] = D::multiply_add(sums[c][r], w[r], codes);
                }
            }
        }
        std::array::from_fn(|c| {
            let mut lanes = [D::zero(); 4];
            lanes[..R].copy_from_slice(&sums[c]);
            let mut totals = D::totals(lanes);
            // The rest of a row not a multiple of `WIDTH` long (never in ResNet50: every
            // convolution after the stem has a multiple of 64 input channels).
            for (r, total) in totals.iter_mut().take(R).enumerate() {
                *total += (whole..k)
                    .map(|i| i32::from(w[r][i]) * i32::from(a[c][i]))
                    .sum::<i32>();
            }
            totals
        })
    }
}

/// The output rows of one tile of channels, with their scales.
struct Out<'a> {
    /// (channels, positions)
    y: &'a mut [f32],
    positions: usize,
    /// Activation scale x weight scale, per channel.
    factors: &'a [f32],
}

impl Out<'_> {
    /// Channels `row..row + R` at `range`'s positions, `COLS` at a time.
    #[inline(always)]
    fn columns<D: Dot, const R: usize>(
        mut self,
        operands: Operands<'_>,
        row: usize,
        range: std::ops::Range<usize>,
    ) {
        let mut p = range.start;
        while p + COLS <= range.end {
            self.add::<R, COLS>(p, operands.sums::<D, R, COLS>(row, p));
            p += COLS;
        }
        while p < range.end {
            self.add::<R, 1>(p, operands.sums::<D, R, 1>(row, p));
            p += 1;
        }
    }

    #[inline(always)]
    fn add<const R: usize, const C: usize>(&mut self, p: usize, sums: [[i32; 4]; C]) {
        for (c, totals) in sums.iter().enumerate() {
            for (r, &total) in totals.iter().take(R).enumerate() {
                self.y[r * self.positions + p + c] += self.factors[r] * total as f32;
            }
        }
    }
}

/// The same sums as the wasm instructions, lane by lane: `N` products summed in consecutive
/// groups of `N / 4` into four lanes. `Portable<8>` is `i32x4.dot_i16x8_s`, `Portable<16>`
/// `i32x4.relaxed_dot_i8x16_i7x16_add_s` (whose second operand is 7 bits: a code with the top
/// bit set has no defined product, so none may reach it).
#[cfg(test)]
pub(super) struct Portable<const N: usize>;

#[cfg(test)]
impl<const N: usize> Dot for Portable<N> {
    const WIDTH: usize = N;
    type Loaded = [i32; N];
    type Sums = [i32; 4];

    fn zero() -> [i32; 4] {
        [0; 4]
    }

    fn weights(row: &[i8]) -> [i32; N] {
        std::array::from_fn(|i| i32::from(row[i]))
    }

    fn codes(row: &[u8]) -> [i32; N] {
        std::array::from_fn(|i| {
            assert!(row[i] < 128, "activation codes are 7-bit");
            i32::from(row[i])
        })
    }

    fn multiply_add(sums: [i32; 4], w: [i32; N], a: [i32; N]) -> [i32; 4] {
        let group = N / 4;
        std::array::from_fn(|j| {
            let products: i32 = (j * group..(j + 1) * group).map(|i| w[i] * a[i]).sum();
            sums[j].wrapping_add(products)
        })
    }

    fn totals(sums: [[i32; 4]; 4]) -> [i32; 4] {
        sums.map(|lanes| lanes.iter().sum())
    }
}

/// Lane i of the result: the total of the four lanes of `sums[i]`.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn lane_totals([a, b, c, d]: [std::arch::wasm32::v128; 4]) -> [i32; 4] {
    use std::arch::wasm32::{i32x4_add, i32x4_extract_lane, i32x4_shuffle};
    // Interleave pairs, add, then halves.
    let ab = i32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(a, b),
        i32x4_shuffle::<2, 6, 3, 7>(a, b),
    );
    let cd = i32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(c, d),
        i32x4_shuffle::<2, 6, 3, 7>(c, d),
    );
    let all = i32x4_add(
        i32x4_shuffle::<0, 1, 4, 5>(ab, cd),
        i32x4_shuffle::<2, 3, 6, 7>(ab, cd),
    );
    [
        i32x4_extract_lane::<0>(all),
        i32x4_extract_lane::<1>(all),
        i32x4_extract_lane::<2>(all),
        i32x4_extract_lane::<3>(all),
    ]
}

/// wasm's 128-bit SIMD (the page is built with `+simd128`).
#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    not(feature = "relaxed-simd")
))]
pub(super) struct Simd128;

#[cfg(all(
    target_arch = "wasm32",
    target_feature = "simd128",
    not(feature = "relaxed-simd")
))]
impl Dot for Simd128 {
    const WIDTH: usize = 8;
    type Loaded = std::arch::wasm32::v128;
    type Sums = std::arch::wasm32::v128;

    #[inline(always)]
    fn zero() -> Self::Sums {
        std::arch::wasm32::i32x4_splat(0)
    }

    #[inline(always)]
    fn weights(row: &[i8]) -> Self::Loaded {
        assert!(row.len() >= 8);
        // SAFETY: eight bytes are in bounds (checked); the load has no alignment requirement.
        unsafe { std::arch::wasm32::i16x8_load_extend_i8x8(row.as_ptr()) }
    }

    #[inline(always)]
    fn codes(row: &[u8]) -> Self::Loaded {
        assert!(row.len() >= 8);
        // SAFETY: as in `weights`.
        unsafe { std::arch::wasm32::u16x8_load_extend_u8x8(row.as_ptr()) }
    }

    #[inline(always)]
    fn multiply_add(sums: Self::Sums, weights: Self::Loaded, codes: Self::Loaded) -> Self::Sums {
        use std::arch::wasm32::{i32x4_add, i32x4_dot_i16x8};
        i32x4_add(sums, i32x4_dot_i16x8(weights, codes))
    }

    #[inline(always)]
    fn totals(sums: [Self::Sums; 4]) -> [i32; 4] {
        lane_totals(sums)
    }
}

/// wasm's relaxed SIMD int8 dot product (the worker build with feature `relaxed-simd`).
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
pub(super) struct Relaxed;

#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
impl Dot for Relaxed {
    const WIDTH: usize = 16;
    type Loaded = std::arch::wasm32::v128;
    type Sums = std::arch::wasm32::v128;

    #[inline(always)]
    fn zero() -> Self::Sums {
        std::arch::wasm32::i32x4_splat(0)
    }

    #[inline(always)]
    fn weights(row: &[i8]) -> Self::Loaded {
        assert!(row.len() >= 16);
        // SAFETY: sixteen bytes are in bounds (checked); the load has no alignment requirement.
        unsafe { std::arch::wasm32::v128_load(row.as_ptr().cast()) }
    }

    #[inline(always)]
    fn codes(row: &[u8]) -> Self::Loaded {
        assert!(row.len() >= 16);
        // SAFETY: as in `weights`.
        unsafe { std::arch::wasm32::v128_load(row.as_ptr().cast()) }
    }

    #[inline(always)]
    fn multiply_add(sums: Self::Sums, weights: Self::Loaded, codes: Self::Loaded) -> Self::Sums {
        std::arch::wasm32::i32x4_relaxed_dot_i8x16_i7x16_add(weights, codes, sums)
    }

    #[inline(always)]
    fn totals(sums: [Self::Sums; 4]) -> [i32; 4] {
        lane_totals(sums)
    }
}

/// [`accumulate`] with relaxed SIMD's dot product, compiled for relaxed SIMD as a whole (its
/// instructions are only inlined into functions that enable the feature).
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
#[target_feature(enable = "relaxed-simd")]
pub(super) fn accumulate_relaxed(
    y: &mut [f32],
    weights: &[i8],
    weight_scales: &[f32],
    patches: &[u8],
    scale: f32,
) {
    accumulate::<Relaxed>(y, weights, weight_scales, patches, scale);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(c_out, patch_len)` weight codes over the full int8 range, `(positions, patch_len)`
    /// 7-bit activation codes.
    fn operands(c_out: usize, patch_len: usize, positions: usize) -> (Vec<i8>, Vec<u8>) {
        let spread = |i: usize, seed: usize| (i * 2_654_435_761 + seed) >> 7;
        let weights = (0..c_out * patch_len)
            .map(|i| ((spread(i, 1) % 255) as i16 - 127) as i8)
            .collect();
        let codes = (0..positions * patch_len)
            .map(|i| (spread(i, 2) % 128) as u8)
            .collect();
        (weights, codes)
    }

    fn check(c_out: usize, patch_len: usize, positions: usize) {
        let (weights, patches) = operands(c_out, patch_len, positions);
        let weight_scales: Vec<f32> = (0..c_out).map(|c| 0.5 + c as f32 / 8.0).collect();
        let (scale, bias) = (0.25, 3.0);
        for (kernel, y) in with_each_kernel(&weights, &weight_scales, &patches, scale, bias) {
            expect_exact_sums(
                &y,
                kernel,
                (&weights, &weight_scales, &patches),
                (scale, bias),
            );
        }
    }

    /// `accumulate`'s output with each portable kernel, every output starting at `start`.
    fn with_each_kernel(
        weights: &[i8],
        weight_scales: &[f32],
        patches: &[u8],
        scale: f32,
        start: f32,
    ) -> [(&'static str, Vec<f32>); 2] {
        let len = weight_scales.len() * patches.len() / (weights.len() / weight_scales.len());
        let mut plain = vec![start; len];
        accumulate::<Portable<8>>(&mut plain, weights, weight_scales, patches, scale);
        let mut relaxed = vec![start; len];
        accumulate::<Portable<16>>(&mut relaxed, weights, weight_scales, patches, scale);
        [("plain", plain), ("relaxed", relaxed)]
    }

    /// Every output of `y` is `bias + scale * weight_scale * (exact dot product)`.
    fn expect_exact_sums(
        y: &[f32],
        kernel: &str,
        (weights, weight_scales, patches): (&[i8], &[f32], &[u8]),
        (scale, bias): (f32, f32),
    ) {
        let c_out = weight_scales.len();
        let patch_len = weights.len() / c_out;
        let positions = patches.len() / patch_len;
        for c in 0..c_out {
            for p in 0..positions {
                let sum: i32 = (0..patch_len)
                    .map(|k| {
                        i32::from(weights[c * patch_len + k])
                            * i32::from(patches[p * patch_len + k])
                    })
                    .sum();
                let expected = bias + scale * weight_scales[c] * sum as f32;
                let got = y[c * positions + p];
                assert!(
                    (got - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                    "{kernel}: channel {c}, position {p} of {c_out}x{patch_len}x{positions}: \
                     {got} against {expected}"
                );
            }
        }
    }

    #[test]
    fn every_output_is_its_rows_exact_dot_product_scaled_onto_the_output() {
        // Whole tiles; a last tile of 1, 2 and 3 channels; an odd count of positions.
        for c_out in [4, 5, 6, 7, 8] {
            check(c_out, 64, 9);
        }
        // Rows not a multiple of 8 or 16 long; a single position and channel.
        check(6, 21, 5);
        check(3, 40, 3);
        check(1, 3, 1);
        // Rows so long that the positions split into several blocks (two positions each).
        check(5, 40_000, 5);
        // The largest codes: 127 x 127 x patch_len stays far inside i32.
        let (c_out, patch_len, positions) = (4, 4608, 2);
        let weights = vec![127i8; c_out * patch_len];
        let patches = vec![127u8; positions * patch_len];
        for (kernel, y) in with_each_kernel(&weights, &[1.0; 4], &patches, 1.0, 0.0) {
            assert!(
                y.iter().all(|&v| v == (127 * 127 * 4608) as f32),
                "{kernel}: {y:?}"
            );
        }
    }
}
