//! The int8 path's quantizer inner step: sixteen channels x sixteen positions of f32 activations
//! to 7-bit codes, written channels-last (one position's sixteen codes contiguous). Quantized a
//! channel at a time (sixteen positions in four vectors), then transposed as bytes in registers
//! by four rounds of interleaves. Written once over [`Lanes`], for x86's SSE2 natively and
//! wasm's simd128 in the page: the same IEEE operations as the scalar loop, so the same codes.

/// Channels and positions per tile.
pub(super) const TILE: usize = 16;

/// The vector operations a tile needs.
pub(super) trait Lanes {
    type F: Copy;
    type B: Copy;
    fn splat(v: f32) -> Self::F;
    /// Four f32 at `src`.
    unsafe fn load(src: *const f32) -> Self::F;
    /// `min(v * inverse + 0.5, 127)` truncated: four codes as i32.
    fn code(v: Self::F, inverse: Self::F, half: Self::F, max: Self::F) -> Self::B;
    /// Four vectors of four i32 codes (each 0..=127) as sixteen bytes.
    fn narrow(a: Self::B, b: Self::B, c: Self::B, d: Self::B) -> Self::B;
    /// Interleave the low / high halves of `a` and `b` in units of `BYTES` bytes.
    fn interleave_low<const BYTES: usize>(a: Self::B, b: Self::B) -> Self::B;
    fn interleave_high<const BYTES: usize>(a: Self::B, b: Self::B) -> Self::B;
    unsafe fn store(dst: *mut u8, v: Self::B);
}

/// Codes of channels `c0..c0 + TILE` at positions `first..first + TILE` of `image`
/// ((C, positions) f32) into `out` ((positions in the tile, channels) u8, from position `first`).
///
/// # Safety
/// `image` holds channels `c0..c0 + TILE` at positions `first..first + TILE`, and `out` at least
/// `(TILE - 1) * channels + c0 + TILE` bytes.
#[inline(always)]
pub(super) unsafe fn quantize_tile<L: Lanes>(
    image: &[f32],
    positions: usize,
    (c0, first): (usize, usize),
    inverse: f32,
    out: &mut [u8],
    channels: usize,
) {
    debug_assert!((c0 + TILE) * positions <= image.len() && first + TILE <= positions);
    debug_assert!((TILE - 1) * channels + c0 + TILE <= out.len());
    let (inverse, half, max) = (L::splat(inverse), L::splat(0.5), L::splat(127.0));
    let rows: [L::B; TILE] = std::array::from_fn(|ch| {
        let src = image.as_ptr().add((c0 + ch) * positions + first);
        let code = |j: usize| L::code(L::load(src.add(4 * j)), inverse, half, max);
        L::narrow(code(0), code(1), code(2), code(3))
    });
    for (p, column) in transpose::<L>(rows).into_iter().enumerate() {
        L::store(out.as_mut_ptr().add(p * channels + c0), column);
    }
}

/// Sixteen rows of sixteen bytes to sixteen columns.
#[inline(always)]
fn transpose<L: Lanes>(r: [L::B; TILE]) -> [L::B; TILE] {
    // a[h][i], unit j of 2 bytes: column 8h + j, rows 2i, 2i + 1.
    let a: [[L::B; 8]; 2] = [
        std::array::from_fn(|i| L::interleave_low::<1>(r[2 * i], r[2 * i + 1])),
        std::array::from_fn(|i| L::interleave_high::<1>(r[2 * i], r[2 * i + 1])),
    ];
    // b[q][i], unit j of 4 bytes: column 4q + j, rows 4i..4i + 4.
    let b: [[L::B; 4]; 4] = std::array::from_fn(|q| {
        let a = &a[q / 2];
        std::array::from_fn(|i| match q % 2 {
            0 => L::interleave_low::<2>(a[2 * i], a[2 * i + 1]),
            _ => L::interleave_high::<2>(a[2 * i], a[2 * i + 1]),
        })
    });
    // c[e][i], unit j of 8 bytes: column 2e + j, rows 8i..8i + 8.
    let c: [[L::B; 2]; 8] = std::array::from_fn(|e| {
        let b = &b[e / 2];
        std::array::from_fn(|i| match e % 2 {
            0 => L::interleave_low::<4>(b[2 * i], b[2 * i + 1]),
            _ => L::interleave_high::<4>(b[2 * i], b[2 * i + 1]),
        })
    });
    std::array::from_fn(|col| match col % 2 {
        0 => L::interleave_low::<8>(c[col / 2][0], c[col / 2][1]),
        _ => L::interleave_high::<8>(c[col / 2][0], c[col / 2][1]),
    })
}

#[cfg(target_arch = "x86_64")]
pub(super) struct Sse2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Sse2 {
    type F = std::arch::x86_64::__m128;
    type B = std::arch::x86_64::__m128i;

    #[inline(always)]
    fn splat(v: f32) -> Self::F {
        // SAFETY: SSE2 is part of x86_64.
        unsafe { std::arch::x86_64::_mm_set1_ps(v) }
    }

    #[inline(always)]
    unsafe fn load(src: *const f32) -> Self::F {
        std::arch::x86_64::_mm_loadu_ps(src)
    }

    #[inline(always)]
    fn code(v: Self::F, inverse: Self::F, half: Self::F, max: Self::F) -> Self::B {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64. `_mm_min_ps(x, max)` is `if x < max { x } else { max }`.
        unsafe { _mm_cvttps_epi32(_mm_min_ps(_mm_add_ps(_mm_mul_ps(v, inverse), half), max)) }
    }

    #[inline(always)]
    fn narrow(a: Self::B, b: Self::B, c: Self::B, d: Self::B) -> Self::B {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64.
        unsafe { _mm_packus_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(c, d)) }
    }

    #[inline(always)]
    fn interleave_low<const BYTES: usize>(a: Self::B, b: Self::B) -> Self::B {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64.
        unsafe {
            match BYTES {
                1 => _mm_unpacklo_epi8(a, b),
                2 => _mm_unpacklo_epi16(a, b),
                4 => _mm_unpacklo_epi32(a, b),
                _ => _mm_unpacklo_epi64(a, b),
            }
        }
    }

    #[inline(always)]
    fn interleave_high<const BYTES: usize>(a: Self::B, b: Self::B) -> Self::B {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86_64.
        unsafe {
            match BYTES {
                1 => _mm_unpackhi_epi8(a, b),
                2 => _mm_unpackhi_epi16(a, b),
                4 => _mm_unpackhi_epi32(a, b),
                _ => _mm_unpackhi_epi64(a, b),
            }
        }
    }

    #[inline(always)]
    unsafe fn store(dst: *mut u8, v: Self::B) {
        std::arch::x86_64::_mm_storeu_si128(dst.cast(), v)
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(super) struct Simd128;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Lanes for Simd128 {
    type F = std::arch::wasm32::v128;
    type B = std::arch::wasm32::v128;

    #[inline(always)]
    fn splat(v: f32) -> Self::F {
        std::arch::wasm32::f32x4_splat(v)
    }

    #[inline(always)]
    unsafe fn load(src: *const f32) -> Self::F {
        std::arch::wasm32::v128_load(src.cast())
    }

    #[inline(always)]
    fn code(v: Self::F, inverse: Self::F, half: Self::F, max: Self::F) -> Self::B {
        use std::arch::wasm32::*;
        // `f32x4_pmin(x, max)` is `if max < x { max } else { x }`, `float::smaller`'s rule.
        i32x4_trunc_sat_f32x4(f32x4_pmin(f32x4_add(f32x4_mul(v, inverse), half), max))
    }

    #[inline(always)]
    fn narrow(a: Self::B, b: Self::B, c: Self::B, d: Self::B) -> Self::B {
        use std::arch::wasm32::*;
        u8x16_narrow_i16x8(i16x8_narrow_i32x4(a, b), i16x8_narrow_i32x4(c, d))
    }

    #[inline(always)]
    fn interleave_low<const BYTES: usize>(a: Self::B, b: Self::B) -> Self::B {
        use std::arch::wasm32::*;
        match BYTES {
            1 => i8x16_shuffle::<0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23>(a, b),
            2 => i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(a, b),
            4 => i32x4_shuffle::<0, 4, 1, 5>(a, b),
            _ => i64x2_shuffle::<0, 2>(a, b),
        }
    }

    #[inline(always)]
    fn interleave_high<const BYTES: usize>(a: Self::B, b: Self::B) -> Self::B {
        use std::arch::wasm32::*;
        match BYTES {
            1 => {
                i8x16_shuffle::<8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31>(a, b)
            }
            2 => i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(a, b),
            4 => i32x4_shuffle::<2, 6, 3, 7>(a, b),
            _ => i64x2_shuffle::<1, 3>(a, b),
        }
    }

    #[inline(always)]
    unsafe fn store(dst: *mut u8, v: Self::B) {
        std::arch::wasm32::v128_store(dst.cast(), v)
    }
}
