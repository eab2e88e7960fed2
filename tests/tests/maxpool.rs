//! The stem's max pool: the fused CPU op equals candle's `max_pool2d` (the eval form on other
//! devices) and the maximum of nine strided views (the training form there).

use candle_core::{Device, Tensor};
use pneumoscope::ops::max_pool::{stem_max_pool, stem_max_pool_by_tensor_ops};

#[test]
fn fused_max_pool_equals_both_tensor_op_forms() {
    for (h, w) in [(112, 112), (113, 111), (7, 9), (2, 2), (1, 1)] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap();
        let fused = stem_max_pool(&x, false).unwrap();
        assert_eq!(fused.dims()[2..], [(h - 1) / 2 + 1, (w - 1) / 2 + 1]);
        for train in [false, true] {
            let reference = stem_max_pool_by_tensor_ops(&x, train).unwrap();
            assert_eq!(fused.dims(), reference.dims(), "{h}x{w}");
            let diff = (&fused - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{h}x{w} train {train}"
            );
        }
    }
}

#[test]
fn max_pool_matches_a_direct_computation() {
    let (h, w) = (5, 6);
    let values: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 23) as f32).collect();
    let x = Tensor::from_vec(values.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
    let pooled = stem_max_pool(&x, false).unwrap().flatten_all().unwrap();
    let pooled = pooled.to_vec1::<f32>().unwrap();
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut best = f32::NEG_INFINITY;
            for y in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                for x in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                    best = best.max(values[y * w + x]);
                }
            }
            assert_eq!(pooled[oy * ow + ox], best, "({oy}, {ox})");
        }
    }
}

/// Training's gradient reaches exactly each window's (first) maximum, summed where windows
/// overlap, as PyTorch's `max_pool2d` backward does.
#[test]
fn training_max_pool_gradient_goes_to_each_window_maximum() {
    let (h, w) = (7, 8);
    let values: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 23) as f32).collect();
    let x = candle_core::Var::from_vec(values.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let upstream: Vec<f32> = (0..oh * ow).map(|i| 1.0 + i as f32).collect();
    let upstream_t = Tensor::from_vec(upstream.clone(), (1, 1, oh, ow), &Device::Cpu).unwrap();
    let pooled = stem_max_pool(x.as_tensor(), true).unwrap();
    let grads = (pooled * upstream_t)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
    let mut expected = vec![0f32; h * w];
    for oy in 0..oh {
        for ox in 0..ow {
            let mut best: Option<usize> = None;
            for y in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                for x in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                    if best.is_none_or(|b| values[y * w + x] > values[b]) {
                        best = Some(y * w + x);
                    }
                }
            }
            expected[best.unwrap()] += upstream[oy * ow + ox];
        }
    }
    assert_eq!(grad.to_vec1::<f32>().unwrap(), expected);
}
