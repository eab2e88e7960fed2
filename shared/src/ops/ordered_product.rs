//! A matrix product whose every output sums its terms in one fixed order, each term a separate
//! multiply and add, so native code and wasm give the same bits.
//!
//! Why it matters: the int8 layers after the stem round their input to 255 levels, so a last-bit
//! difference in the stem's float output moves a few values across a rounding boundary and the
//! answer with them (1e-7 relative noise on the stem's output moved a probability by 6e-4).
//! gemm sums in one order with fused multiply-adds natively and in another without them in the
//! browser; Rust neither reorders nor fuses float arithmetic, so this loop, vectorised across
//! output positions only, gives the page exactly `trainer predict`'s answers.

use crate::ops::{for_each_chunk_mut, threads};

/// Output rows computed together: each loaded patch value serves this many weights.
pub(super) const ROWS: usize = 4;
/// Output positions computed together (two 128-bit vectors per row).
const LANES: usize = 8;
/// Positions per pass over the rows: 128 positions of patches are 25 KB for a grey image's 49
/// taps, 75 KB for a colour image's 147.
const BAND: usize = 128;

/// The weight (rows, taps) as blocks of `ROWS` rows, tap-major: block b's tap t is
/// `blocks[b * taps + t]`, rows past the last zero.
pub(super) fn weight_blocks(weight: &[f32], taps: usize) -> Vec<[f32; ROWS]> {
    weight
        .chunks(ROWS * taps)
        .flat_map(|block| {
            (0..taps).map(move |t| {
                std::array::from_fn(|r| block.get(r * taps + t).copied().unwrap_or(0.0))
            })
        })
        .collect()
}

/// `dst[o][p] += w[o][0] * patches[0][p] + w[o][1] * patches[1][p] + ...`, left to right.
/// `dst`: (rows, positions); `blocks`: from `weight_blocks`; `patches`: (taps, positions).
pub(super) fn accumulate_in_order(
    dst: &mut [f32],
    blocks: &[[f32; ROWS]],
    patches: &[f32],
    taps: usize,
    positions: usize,
) {
    // Rows padded to whole tiles, so that every tile is loaded and stored as fixed-size arrays
    // (a partial tile's copy kept the sums out of registers: seven times slower).
    let pitch = positions.next_multiple_of(LANES);
    if pitch == positions {
        return accumulate_tiles(dst, blocks, patches, taps, pitch);
    }
    let patches = padded(patches, positions, pitch);
    let mut out = padded(dst, positions, pitch);
    accumulate_tiles(&mut out, blocks, &patches, taps, pitch);
    for (to, from) in dst.chunks_mut(positions).zip(out.chunks(pitch)) {
        to.copy_from_slice(&from[..positions]);
    }
}

/// Rows of `width` values as rows of `pitch`, zero beyond `width`.
fn padded(values: &[f32], width: usize, pitch: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len() / width * pitch];
    for (to, from) in out.chunks_mut(pitch).zip(values.chunks(width)) {
        to[..width].copy_from_slice(from);
    }
    out
}

/// `accumulate_in_order` on rows of `pitch` positions, a multiple of `LANES`.
fn accumulate_tiles(
    dst: &mut [f32],
    blocks: &[[f32; ROWS]],
    patches: &[f32],
    taps: usize,
    pitch: usize,
) {
    // Each thread takes whole blocks of rows and goes through the positions a band at a time,
    // so that a band's patches (taps x BAND) stay in cache while each of its blocks reads them.
    let blocks_per_thread = blocks.len().div_ceil(taps).div_ceil(threads());
    for_each_chunk_mut(dst, blocks_per_thread * ROWS * pitch, |part, rows| {
        let first_block = part * blocks_per_thread;
        for band in (0..pitch).step_by(BAND) {
            let end = (band + BAND).min(pitch);
            for (b, rows) in rows.chunks_mut(ROWS * pitch).enumerate() {
                let block = &blocks[(first_block + b) * taps..][..taps];
                for start in (band..end).step_by(LANES) {
                    accumulate_tile(rows, block, patches, start, pitch);
                }
            }
        }
    });
}

/// The (up to) `ROWS` x `LANES` outputs at positions `start..` of `rows` (rows, pitch).
fn accumulate_tile(
    rows: &mut [f32],
    block: &[[f32; ROWS]],
    patches: &[f32],
    start: usize,
    pitch: usize,
) {
    let tile = |row: &[f32]| -> [f32; LANES] { row[start..][..LANES].try_into().unwrap() };
    let mut sums = [[0f32; LANES]; ROWS];
    for (sum, row) in sums.iter_mut().zip(rows.chunks(pitch)) {
        *sum = tile(row);
    }
    for (weights, patch_row) in block.iter().zip(patches.chunks_exact(pitch)) {
        let column = tile(patch_row);
        for (sum, &weight) in sums.iter_mut().zip(weights) {
            for (s, &p) in sum.iter_mut().zip(&column) {
                *s += weight * p;
            }
        }
    }
    for (sum, row) in sums.iter().zip(rows.chunks_mut(pitch)) {
        row[start..][..LANES].copy_from_slice(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(i: usize, seed: usize) -> f32 {
        (((i * 2_654_435_761 + seed) >> 7) % 2001) as f32 / 1000.0 - 1.0
    }

    /// The same bits as the plain loop (which is what makes them target-independent), for row
    /// counts that fill the last block or not and position counts that fill the last tile or not.
    #[test]
    fn every_sum_runs_left_to_right_like_the_plain_loop() {
        for (rows, taps, positions) in [(8, 49, 64), (5, 49, 42), (3, 7, 9), (4, 1, 8)] {
            let weight: Vec<f32> = (0..rows * taps).map(|i| spread(i, 1)).collect();
            let patches: Vec<f32> = (0..taps * positions).map(|i| spread(i, 2) * 37.0).collect();
            let start: Vec<f32> = (0..rows * positions).map(|i| spread(i, 3)).collect();
            let mut wanted = start.clone();
            for o in 0..rows {
                for p in 0..positions {
                    for t in 0..taps {
                        wanted[o * positions + p] +=
                            weight[o * taps + t] * patches[t * positions + p];
                    }
                }
            }
            let mut got = start;
            accumulate_in_order(
                &mut got,
                &weight_blocks(&weight, taps),
                &patches,
                taps,
                positions,
            );
            let same = got
                .iter()
                .zip(&wanted)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{rows}x{taps}x{positions}: not the plain loop's bits");
        }
    }
}
