//! The matrix product under every convolution: `dst = lhs @ rhs` (or `+=`) on strided views,
//! on the calling thread (callers spread images or output bands over threads themselves), by
//! gemm 0.19, the one candle uses (in the browser its simd128 kernel, which gemm runs only with
//! its `wasm-simd128-enable` feature: see shared/Cargo.toml).

/// A strided view of a slice as a matrix.
#[derive(Clone, Copy)]
pub(super) struct Matrix<'a> {
    data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    pub(super) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Every index the view can touch lies inside its slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst` (row-major) = lhs @ rhs, or `dst += lhs @ rhs` when `accumulate`.
pub(super) fn matmul(dst: &mut [f32], lhs: Matrix, rhs: Matrix, accumulate: bool) {
    assert!(lhs.cols == rhs.rows && lhs.in_bounds() && rhs.in_bounds());
    assert_eq!(dst.len(), lhs.rows * rhs.cols);
    // SAFETY: the asserts keep every index gemm computes from the strides inside the slices.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            dst.as_mut_ptr(),
            1,
            rhs.cols as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product against the definition, on transposed (strided) views too.
    #[test]
    fn product_matches_the_definition_on_strided_views() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let expected: Vec<f32> = (0..m * n)
            .map(|i| (0..k).map(|j| a[i / n * k + j] * b[j * n + i % n]).sum())
            .collect();
        let mut dst = vec![0.0; m * n];
        matmul(
            &mut dst,
            Matrix::row_major(&a, m, k),
            Matrix::row_major(&bt, n, k).t(),
            false,
        );
        for (got, want) in dst.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        matmul(
            &mut dst,
            Matrix::row_major(&a, m, k),
            Matrix::row_major(&b, k, n),
            true,
        );
        for (got, want) in dst.iter().zip(&expected) {
            assert!((got - 2.0 * want).abs() < 1e-5, "{got} vs 2 x {want}");
        }
    }
}
