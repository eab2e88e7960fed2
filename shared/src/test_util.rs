//! Helpers for the fused ops' unit tests, which all hold an op to candle's own ops and autograd.

use candle_core::Tensor;

/// What a backward pass from `sum(y * upstream)` hands each of `inputs`.
pub(crate) fn grads_of(y: &Tensor, upstream: &Tensor, inputs: &[&Tensor]) -> Vec<Tensor> {
    let grads = (y * upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    inputs
        .iter()
        .map(|t| grads.get(t).expect("a gradient for every input").clone())
        .collect()
}

/// max |a - b| and max |b|.
pub(crate) fn max_diff_and_scale(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let max = |t: Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    (max((a - b).unwrap()), max(b.clone()))
}
