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
use rten_gemm::{
    GemmExecutor, GemmInputA, GemmInputB, GemmUninitOptions, PackedAMatrix, PackedBMatrix,
};
#[cfg(not(target_arch = "wasm32"))]
use rten_tensor::{Layout as _, NdTensorView};

use crate::float::smaller;
use crate::ops::conv::Geometry;
use crate::ops::conv_infer::Epilogue;
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
    /// The codes' (patch_len, c_out) transpose, the product's right-hand side, prepacked in
    /// parts of consecutive output channels, one per thread (`convolve` may give each thread
    /// a part).
    #[cfg(not(target_arch = "wasm32"))]
    packed: Vec<ChannelPart>,
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

/// Output channels `channels` of a weight, prepacked for rten-gemm.
#[cfg(not(target_arch = "wasm32"))]
struct ChannelPart {
    channels: std::ops::Range<usize>,
    packed: PackedBMatrix<i8>,
}

#[cfg(not(target_arch = "wasm32"))]
impl ChannelPart {
    /// The (c_out, patch_len) `codes` in as many parts as threads, each at least 64 channels.
    fn pack(codes: &[i8], (c_out, patch_len): (usize, usize)) -> Vec<Self> {
        let parts = crate::ops::threads().min(c_out / 64).max(1);
        let size = c_out.div_ceil(parts).next_multiple_of(4);
        (0..c_out)
            .step_by(size)
            .map(|first| {
                let channels = first..(first + size).min(c_out);
                let transposed = NdTensorView::from_data_with_strides(
                    [patch_len, channels.len()],
                    &codes[first * patch_len..channels.end * patch_len],
                    [1, patch_len],
                )
                .expect("the codes hold c_out x patch_len values");
                Self {
                    channels,
                    packed: INT8_GEMM.with(|gemm| gemm.prepack_b(transposed)),
                }
            })
            .collect()
    }
}

impl Int8Weight {
    /// `weight`: the (c_out, c_in, k, k) kernel, row-major.
    pub fn new(weight: &[f32], (c_out, c_in, k): (usize, usize, usize)) -> Self {
        let patch_len = c_in * k * k;
        let (codes, scales) = channels_last_codes(weight, (c_out, c_in, k));
        Self {
            #[cfg(not(target_arch = "wasm32"))]
            packed: ChannelPart::pack(&codes, (c_out, patch_len)),
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
}

/// A (c_out, c_in, k, k) kernel's int8 codes as (c_out, patch_len) rows in (ky, kx, c) order,
/// and a scale per output channel.
fn channels_last_codes(
    weight: &[f32],
    (c_out, c_in, k): (usize, usize, usize),
) -> (Vec<i8>, Vec<f32>) {
    let patch_len = c_in * k * k;
    assert_eq!(weight.len(), c_out * patch_len);
    if k == 1 {
        return quantize_rows(weight, c_out);
    }
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

/// `largest_usable`, each of `shares` threads scanning a share of `values` (the maximum of the
/// shares' maxima is the same value). A serial scan before every convolution left the second
/// thread idle for 0.3 ns per value (60 us before a 256x28x28 input).
fn largest_usable_shared(values: &[f32], shares: usize) -> Option<f32> {
    if shares == 1 {
        return largest_usable(values);
    }
    let mut largest = vec![None; shares];
    let share = values.len().div_ceil(shares);
    for_each_chunk_mut(&mut largest, 1, |s, largest| {
        let start = (s * share).min(values.len());
        largest[0] = largest_usable(&values[start..(start + share).min(values.len())]);
    });
    largest
        .into_iter()
        .try_fold(0.0, |a, b| Some(crate::float::larger(a, b?)))
}

/// Shares, one per thread, in which the scan and the quantizer go over `values` values: one
/// under 32K values (a fork costs about as much as quantizing 32K; 8K measured no faster).
fn shares(values: usize) -> usize {
    match values < 1 << 15 {
        true => 1,
        false => crate::ops::threads(),
    }
}

/// A (C, H, W) image's values as (H, W, C) 7-bit codes and their scale, or `None` when one is
/// negative (or not finite): then the caller computes in f32.
pub fn quantize_activations(image: &[f32], channels: usize, codes: &mut Vec<u8>) -> Option<f32> {
    let shares = shares(image.len());
    let scale = match largest_usable_shared(image, shares)? {
        largest if largest > 0.0 => largest / ACTIVATION_MAX,
        _ => 1.0,
    };
    let inverse = 1.0 / scale;
    let positions = image.len() / channels.max(1);
    codes.clear();
    codes.resize(image.len(), 0);
    // A share of the positions per thread (`shares`), a block of positions at a time within
    // it, so that the rows written stay in cache.
    const BLOCK: usize = 2 * TILE;
    let share = positions.div_ceil(shares).next_multiple_of(BLOCK);
    for_each_chunk_mut(codes, share * channels, |s, codes| {
        for (b, codes) in codes.chunks_mut(BLOCK * channels).enumerate() {
            let first = s * share + b * BLOCK;
            let end = first + codes.len() / channels.max(1);
            quantize_block(image, positions, first..end, inverse, codes, channels);
        }
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

/// `relu?(start + scale * (weight @ patches^T))` into `y` ((c_out, positions) row-major): the
/// patches are those of `geometry` over the channels-last `codes` (activation scale `scale`),
/// the start and the ReLU `epilogue`'s.
pub(super) fn convolve(
    y: &mut [f32],
    geometry: &Geometry,
    codes: &[u8],
    weight: &Int8Weight,
    scale: f32,
    epilogue: &Epilogue,
) {
    assert_eq!(y.len(), weight.c_out() * geometry.positions());
    #[cfg(target_arch = "wasm32")]
    in_page(y, geometry, codes, epilogue, |y, patches| {
        #[cfg(feature = "relaxed-simd")]
        crate::ops::int8_rows::accumulate_relaxed(y, &weight.rows, &weight.scales, patches, scale);
        #[cfg(not(feature = "relaxed-simd"))]
        crate::ops::int8_rows::accumulate::<crate::ops::int8_rows::Simd128>(
            y,
            &weight.rows,
            &weight.scales,
            patches,
            scale,
        );
    });
    #[cfg(not(target_arch = "wasm32"))]
    natively(y, geometry, codes, weight, scale, epilogue);
}

/// `convolve` in the page: the output started, the product accumulated onto it by `accumulate`
/// (`int8_rows`, from all the patch rows), then the ReLU.
#[cfg(any(target_arch = "wasm32", test))]
fn in_page(
    y: &mut [f32],
    geometry: &Geometry,
    codes: &[u8],
    epilogue: &Epilogue,
    accumulate: impl FnOnce(&mut [f32], &[u8]),
) {
    epilogue.fill(y, 0);
    let mut scratch = Vec::new();
    accumulate(
        y,
        geometry.patch_rows(codes, 0..geometry.positions(), &mut scratch),
    );
    epilogue.finish(y);
}

/// `convolve` natively, with one split: each thread takes a band of output positions or a
/// part of the output channels, whichever operand is larger (the patches or the weight), builds
/// its patch rows, sums its products with rten-gemm and finishes its outputs. Splitting each
/// step on its own (the product by rten's blocks, the bias fill, the scaling by channels, the
/// ReLU) forked several times per convolution or left serial passes, and two threads were no
/// faster than one (README, "Two threads, one image").
#[cfg(not(target_arch = "wasm32"))]
fn natively(
    y: &mut [f32],
    geometry: &Geometry,
    codes: &[u8],
    weight: &Int8Weight,
    scale: f32,
    epilogue: &Epilogue,
) {
    let positions = geometry.positions();
    let parts = &weight.packed;
    let threads = crate::ops::threads();
    // One thread (an image per thread in a folder) takes every part in one task, on one set of
    // patch rows.
    let by_channels = threads > 1 && parts.len() > 1 && positions < weight.c_out();
    let tasks = match by_channels {
        true => parts.len(),
        false => threads.min(positions.div_ceil(4)).max(1),
    };
    let band = positions.div_ceil(tasks).next_multiple_of(4);
    let output = OutputRows {
        first: y.as_mut_ptr(),
        positions,
        output: std::marker::PhantomData,
    };
    crate::ops::for_each_index(tasks, |t| {
        let (range, parts) = match by_channels {
            true => (0..positions, &parts[t..t + 1]),
            false => (t * band..((t + 1) * band).min(positions), &parts[..]),
        };
        if range.is_empty() {
            return;
        }
        let mut scratch = Vec::new();
        let patches = geometry.patch_rows(codes, range.clone(), &mut scratch);
        let patches = PatchRows::new(patches, weight.patch_len, threads > 1 || parts.len() > 1);
        for part in parts {
            let sums = product(&part.packed, &patches, part.channels.len());
            // SAFETY: `y` holds c_out rows of `positions`, and no two tasks share a channel
            // at a position.
            let mut rows = unsafe { output.band(part.channels.clone(), range.clone()) };
            let at = (part.channels.start, range.start);
            let scales = &weight.scales[part.channels.clone()];
            write_band(&mut rows, at, &sums, (scales, scale), epilogue);
        }
    });
}

/// A task's patch rows as rten-gemm's left-hand side.
#[cfg(not(target_arch = "wasm32"))]
enum PatchRows<'a> {
    /// Packed inside each product, a block of rows at a time while it is in cache: where they
    /// are used once.
    AsThey(NdTensorView<'a, u8, 2>),
    /// Packed once for the kernel. Left as they are, rten-gemm packed them again for every
    /// part of the weight and, with two threads, for each of its column blocks (half a part):
    /// four times in a band of positions. Packed once, one image at 112x112 on two threads
    /// took 0.95x the time, at 176 and 224 0.91-0.93x.
    Packed(PackedAMatrix<u8>),
}

#[cfg(not(target_arch = "wasm32"))]
impl<'a> PatchRows<'a> {
    /// `patches`: rows of `patch_len` codes; `reused`: whether more than one product, or rten
    /// by column blocks, will read them.
    fn new(patches: &'a [u8], patch_len: usize, reused: bool) -> Self {
        let positions = patches.len() / patch_len.max(1);
        let rows =
            NdTensorView::from_data_with_strides([positions, patch_len], patches, [patch_len, 1])
                .expect("the patches hold positions x patch_len codes");
        match reused {
            true => Self::Packed(INT8_GEMM.with(|gemm| gemm.prepack_a(rows))),
            false => Self::AsThey(rows),
        }
    }

    fn positions(&self) -> usize {
        match self {
            Self::AsThey(rows) => rows.size(0),
            Self::Packed(packed) => packed.rows(),
        }
    }

    fn lhs(&self) -> GemmInputA<'_, u8> {
        match self {
            Self::AsThey(rows) => GemmInputA::Unpacked(*rows),
            Self::Packed(packed) => GemmInputA::Packed(packed),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    /// Each thread's executor: it is not Send, so the op cannot keep one, and making one per
    /// product cost 3% of the forward pass; it only picks the kernel this CPU supports (the
    /// same on every thread, which the prepacked layouts rely on).
    static INT8_GEMM: Int8Gemm = Int8Gemm::default();
}

/// The (positions, channels) sums of the products of `patches` and a part's codes.
#[cfg(not(target_arch = "wasm32"))]
fn product(packed: &PackedBMatrix<i8>, patches: &PatchRows, channels: usize) -> Vec<i32> {
    let positions = patches.positions();
    let mut sums = Vec::with_capacity(positions * channels);
    INT8_GEMM.with(|gemm| {
        gemm.gemm_uninit(
            &mut sums.spare_capacity_mut()[..positions * channels],
            patches.lhs(),
            GemmInputB::Packed(packed),
            GemmUninitOptions::default(),
        )
        .expect("the product's shapes agree by construction")
    });
    // SAFETY: gemm_uninit wrote every one of the positions x channels sums.
    unsafe { sums.set_len(positions * channels) };
    sums
}

/// The (c_out, positions) output, handed to threads as disjoint blocks.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
struct OutputRows<'a> {
    first: *mut f32,
    positions: usize,
    output: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: only `band` reaches the memory, and its callers take disjoint blocks.
#[cfg(not(target_arch = "wasm32"))]
unsafe impl Sync for OutputRows<'_> {}

#[cfg(not(target_arch = "wasm32"))]
impl<'a> OutputRows<'a> {
    /// Rows `channels`, each at positions `range`.
    ///
    /// # Safety
    /// The output holds those rows of `positions`, `range` lies within a row, and no other
    /// slice of these channels and positions is alive.
    unsafe fn band(
        self,
        channels: std::ops::Range<usize>,
        range: std::ops::Range<usize>,
    ) -> Vec<&'a mut [f32]> {
        debug_assert!(range.end <= self.positions);
        channels
            .map(|c| {
                let start = self.first.add(c * self.positions + range.start);
                std::slice::from_raw_parts_mut(start, range.len())
            })
            .collect()
    }
}

/// A block's outputs from its (positions, channels) sums: `rows[i][j]`, output channel
/// `first_channel + i` at position `first_position + j`, starts as the epilogue's start, then
/// `scale * scales[i] * sum` is added and the ReLU applied in one pass: the page's arithmetic.
/// (Starting each output inside that pass, reading the residual there, made one thread 10-40%
/// slower on layer1's 3136 positions at 224: two strided streams per channel instead of one.)
#[cfg(not(target_arch = "wasm32"))]
fn write_band(
    rows: &mut [&mut [f32]],
    (first_channel, first_position): (usize, usize),
    sums: &[i32],
    (scales, scale): (&[f32], f32),
    epilogue: &Epilogue,
) {
    let channels = rows.len();
    let len = sums.len() / channels.max(1);
    // A block of positions at a time, so that the rows of sums it reads stay in cache.
    const BLOCK: usize = 16;
    // Four channels x four positions at a time in registers where there are four of each.
    let tiled_channels = match cfg!(target_arch = "x86_64") {
        true => channels / 4 * 4,
        false => 0,
    };
    for (i, row) in rows.iter_mut().enumerate() {
        epilogue.fill_row(row, first_channel + i, first_position);
    }
    for first in (0..len).step_by(BLOCK) {
        let end = (first + BLOCK).min(len);
        let tiled_end = first + (end - first) / 4 * 4;
        #[cfg(target_arch = "x86_64")]
        for i in (0..tiled_channels).step_by(4) {
            let factors = std::array::from_fn(|k| scale * scales[i + k]);
            for j in (first..tiled_end).step_by(4) {
                // SAFETY: rows i..i + 4 and block positions j..j + 4 exist.
                unsafe { finish_tile(rows, sums, (i, j), factors, epilogue) };
            }
        }
        for (i, row) in rows.iter_mut().enumerate() {
            let factor = scale * scales[i];
            let rest = match i < tiled_channels {
                true => tiled_end..end,
                false => first..end,
            };
            for j in rest {
                let product = factor * sums[j * channels + i] as f32;
                row[j] = epilogue.activate(row[j] + product);
            }
        }
    }
}

/// Rows `i..i + 4` at block positions `j..j + 4`: their start plus `factors[k]` times the
/// (positions, channels) sums transposed in registers, then the ReLU; the same operations in
/// the same order as the scalar loop.
///
/// # Safety
/// Rows `i..i + 4` exist and hold block positions `j..j + 4`, and so does `sums` ((block
/// positions, rows)).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish_tile(
    rows: &mut [&mut [f32]],
    sums: &[i32],
    (i, j): (usize, usize),
    factors: [f32; 4],
    epilogue: &Epilogue,
) {
    use std::arch::x86_64::*;
    let channels = rows.len();
    debug_assert!(i + 4 <= channels && (j + 3) * channels + i + 4 <= sums.len());
    let row = |k: usize| _mm_loadu_si128(sums.as_ptr().add((j + k) * channels + i).cast());
    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
    // Unit pairs (position, channel): low (0,0) (1,0) (0,1) (1,1), high the same of 2 and 3.
    let (low01, low23) = (_mm_unpacklo_epi32(r0, r1), _mm_unpacklo_epi32(r2, r3));
    let (high01, high23) = (_mm_unpackhi_epi32(r0, r1), _mm_unpackhi_epi32(r2, r3));
    let transposed = [
        _mm_unpacklo_epi64(low01, low23),
        _mm_unpackhi_epi64(low01, low23),
        _mm_unpacklo_epi64(high01, high23),
        _mm_unpackhi_epi64(high01, high23),
    ];
    for (k, (sums, factor)) in transposed.into_iter().zip(factors).enumerate() {
        let out = &mut rows[i + k][j..j + 4];
        let start = _mm_loadu_ps(out.as_ptr());
        let product = _mm_mul_ps(_mm_set1_ps(factor), _mm_cvtepi32_ps(sums));
        let value = _mm_add_ps(start, product);
        // max(v, 0) returns its second operand unless v > 0, as `float::relu`: NaN becomes 0.
        let value = match epilogue.relu {
            true => _mm_max_ps(value, _mm_setzero_ps()),
            false => value,
        };
        _mm_storeu_ps(out.as_mut_ptr(), value);
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

    /// A `geometry` convolution of `c_out` channels over `c_in` x `size` x `size` images.
    fn geometry(
        c_in: usize,
        size: (usize, usize),
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> Geometry {
        let config = candle_nn::Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        };
        Geometry::new((1, c_in, size.0, size.1), (c_out, c_in, k, k), config).unwrap()
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
        let bias = vec![0.25; c_out];
        let epilogue = Epilogue {
            bias: &bias,
            residual: None,
            relu: false,
            positions,
        };
        let mut y = vec![0.0; c_out * positions];
        convolve(
            &mut y,
            &geometry(patch_len, (1, positions), c_out, 1, 1),
            &codes,
            &Int8Weight::new(&weight, (c_out, patch_len, 1)),
            scale,
            &epilogue,
        );
        let mut largest_error = 0f32;
        for c in 0..c_out {
            for p in 0..positions {
                let exact: f32 = (0..patch_len)
                    .map(|k| weight[c * patch_len + k] * patches[k * positions + p])
                    .sum::<f32>()
                    + bias[c];
                largest_error = largest_error.max((y[c * positions + p] - exact).abs());
            }
        }
        // Each of the 70 products is off by at most half a step of either code (about 0.004
        // each, relative to values up to 1); rounding errors mostly cancel.
        assert!(largest_error < 0.05, "largest error {largest_error}");
        assert!(largest_error > 0.0, "an int8 product cannot be exact here");
    }

    /// The native convolution (a band of positions or a part of the channels per thread
    /// through rten-gemm, its sums written four by four with start and ReLU) gives the page's
    /// bits (start, `int8_rows`, ReLU): the answers of `trainer predict` and the page rest on
    /// it. Shapes leave partial tiles, bands and parts.
    #[test]
    fn the_native_convolution_gives_the_page_kernels_bits() {
        let shapes = [
            // c_in, (h, w), c_out, k, stride
            (64, (1, 53), 37, 1, 1),
            (128, (4, 4), 64, 1, 1),
            (16, (1, 5), 3, 1, 1),
            (16, (9, 7), 24, 3, 1),
            (32, (10, 10), 19, 3, 2),
            (20, (7, 9), 40, 1, 2),
            // Fewer positions than channels: a part of the channels per thread.
            (32, (3, 3), 200, 3, 1),
            (16, (4, 4), 130, 1, 1),
        ];
        let pool = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        // Threads the weight is packed with (a channel part each), threads it runs on: the
        // last is a folder's image per thread with weights packed for the whole machine.
        for (packed_with, threads) in [(1, 1), (3, 3), (3, 1)] {
            let (packing, pool) = (pool(packed_with), pool(threads));
            for (c_in, size, c_out, k, stride) in shapes {
                let g = geometry(c_in, size, c_out, k, stride);
                let weight = values(c_out * g.patch_len(), 3);
                let image: Vec<f32> = values(g.in_len(), 4)
                    .into_iter()
                    .map(|v| v.max(0.0))
                    .collect();
                let mut codes = Vec::new();
                let scale = quantize_activations(&image, c_in, &mut codes).unwrap();
                let positions = g.positions();
                let (bias, residual) = (values(c_out, 5), values(c_out * positions, 6));
                for (residual, relu) in [(None, false), (Some(&residual[..]), true)] {
                    let epilogue = Epilogue {
                        bias: &bias,
                        residual,
                        relu,
                        positions,
                    };
                    // Packed in as many channel parts as the pool has threads.
                    let int8 = packing.install(|| Int8Weight::new(&weight, (c_out, c_in, k)));
                    let mut native = vec![f32::NAN; c_out * positions];
                    pool.install(|| convolve(&mut native, &g, &codes, &int8, scale, &epilogue));
                    let (rows, scales) = channels_last_codes(&weight, (c_out, c_in, k));
                    let mut page = vec![f32::NAN; c_out * positions];
                    in_page(&mut page, &g, &codes, &epilogue, |y, patches| {
                        crate::ops::int8_rows::accumulate::<crate::ops::int8_rows::Portable<16>>(
                            y, &rows, &scales, patches, scale,
                        )
                    });
                    let same = native
                        .iter()
                        .zip(&page)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{packed_with}/{threads} threads, {c_in}x{size:?} -> {c_out}, k {k} stride {stride}, relu {relu}: native and page differ"
                    );
                }
            }
        }
    }
}
