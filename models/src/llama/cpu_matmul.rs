//! The CPU device's projections and its one entry to `gemm`: `y = x · Wᵀ` with W a
//! quantized weight read from the mapped file. Decode (one token) dots each quantized row
//! with the token directly (`quant::dot`, AVX2 where the CPU has it); prefill dequantizes a
//! panel of W's rows at a time and multiplies it with the whole chunk through the `gemm`
//! crate's register-tiled f32 kernels. Rows are split over the kept thread pool
//! (`cpu_pool`). [`gemm_f32`] wraps the crate's raw-pointer call behind bounds-checked
//! strided views, for these products and for prefill attention (`cpu_attention`).

use kvedge_runtime::gguf::TensorInfo;
use kvedge_runtime::quant::{dequantize, dot, GgmlType};
use kvedge_runtime::{Error, Result as RtResult};

use super::cpu_pool;
use crate::ModelError;

/// A read-only strided view of a matrix: element (i, j) of `rows × cols` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major view of `rows × cols` values, rows `row_stride` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix whose rows are `stride` apart
    /// (W with one output per row, read as Wᵀ).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: stride,
        }
    }

    /// The largest index the view reads, or None when it is empty.
    fn last_index(&self) -> Option<usize> {
        (self.rows > 0 && self.cols > 0)
            .then(|| (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride)
    }

    fn check(&self, what: &str) -> RtResult<()> {
        match self.last_index() {
            Some(last) if last >= self.data.len() => Err(Error::InvalidArgument(format!(
                "gemm: {what} view of {}x{} (strides {}, {}) reads index {last}, past its {} values",
                self.rows,
                self.cols,
                self.row_stride,
                self.col_stride,
                self.data.len()
            ))),
            _ => Ok(()),
        }
    }
}

/// `dst[i * dst_stride + j] = scale · Σ_l a(i, l) · b(l, j)` for the `a.rows × b.cols`
/// product, overwriting dst, single-threaded (the callers split work over the pool). Every
/// view is checked to lie inside its slice before the crate reads or writes through raw
/// pointers, so a wrong shape is an error, never an out-of-bounds access.
pub fn gemm_f32(
    dst: &mut [f32],
    dst_stride: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    scale: f32,
) -> RtResult<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        return Err(Error::InvalidArgument(format!(
            "gemm: a is {m}x{k} but b is {}x{n}",
            b.rows
        )));
    }
    a.check("a")?;
    b.check("b")?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let dst_last = (m - 1) * dst_stride + n - 1;
    if dst_stride < n || dst_last >= dst.len() {
        return Err(Error::InvalidArgument(format!(
            "gemm: a {m}x{n} result with row stride {dst_stride} does not fit the {} values of dst",
            dst.len()
        )));
    }
    if k == 0 {
        for i in 0..m {
            dst[i * dst_stride..i * dst_stride + n].fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: every index the product touches is inside its slice: dst's up to dst_last <
    // dst.len() (rows do not overlap since dst_stride >= n), a's and b's up to their
    // last_index() < len, checked above. dst is a unique borrow, so it does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0f32,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// Dot product in f32 (`quant::dot::dot_f32`: 16 lanes, AVX2 where the CPU has it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot::dot_f32(a, b)
}

/// `y[m][n] = x[m][k] · W[n][k]^T` with W read from the file, rows split over threads.
///
/// One token (decode) dots each quantized row with `x` directly (`matvec_rows`). Several
/// tokens (prefill) dequantize a panel of W's rows to f32 at a time and multiply it with
/// all of `x` through the `gemm` crate's register-tiled f32 kernels (AVX2/AVX-512/NEON
/// chosen at run time), so each weight is dequantized once per chunk and the arithmetic
/// runs near the core's FMA rate; a hand-written tiled kernel would repeat what that
/// crate already does for every SIMD level a phone or laptop has.
pub fn matmul_rows(
    w: &TensorInfo,
    bytes: &[u8],
    x: &[f32],
    m: usize,
    threads: usize,
) -> Result<Vec<f32>, ModelError> {
    let (k, n) = (w.n_cols() as usize, w.n_rows() as usize);
    if x.len() != m * k {
        return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
            format!(
                "matmul: {m} activation rows of {k} expected ({} values), found {}",
                m * k,
                x.len()
            ),
        )));
    }
    let row_bytes = bytes.len() / n.max(1);
    if m == 1 && dot::fused(w.ty) {
        return matvec_rows(w.ty, bytes, row_bytes, x, n, threads);
    }
    // Each thread owns a range of W's rows and writes its [m][rows] block; the blocks
    // are interleaved into y after.
    let per = n.div_ceil(threads.max(1)).max(1);
    let starts: Vec<usize> = (0..n).step_by(per).collect();
    let parts = cpu_pool::run_parts(threads, starts.len(), "matmul", |p| {
        let r0 = starts[p];
        matmul_panel_rows(w.ty, bytes, row_bytes, x, m, k, r0, (r0 + per).min(n))
    })?;
    let mut y = vec![0.0f32; m * n];
    for (p, part) in parts.into_iter().enumerate() {
        let part = part?;
        let r0 = p * per;
        let width = part.len() / m.max(1);
        for (i, row) in part.chunks_exact(width.max(1)).enumerate() {
            y[i * n + r0..i * n + r0 + width].copy_from_slice(row);
        }
    }
    Ok(y)
}

/// Rows `r0..r1` of `x · W^T` as an [m][r1 - r0] block: W dequantized a panel of rows at
/// a time (about 256 KiB of f32, so it stays in the core's cache while `gemm` reuses it
/// for every token), multiplied by `gemm` with no threading of its own.
#[allow(clippy::too_many_arguments)]
fn matmul_panel_rows(
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    x: &[f32],
    m: usize,
    k: usize,
    r0: usize,
    r1: usize,
) -> Result<Vec<f32>, ModelError> {
    let width = r1 - r0;
    let panel_rows = (65536 / k.max(1)).clamp(8, 256).min(width.max(1));
    let mut panel = vec![0.0f32; panel_rows * k];
    let mut out = vec![0.0f32; m * width];
    for p0 in (r0..r1).step_by(panel_rows) {
        let p1 = (p0 + panel_rows).min(r1);
        let rows = p1 - p0;
        for r in p0..p1 {
            let dst = &mut panel[(r - p0) * k..(r - p0 + 1) * k];
            dequantize(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], dst)?;
        }
        gemm_f32(
            &mut out[p0 - r0..],
            width,
            MatRef::rows(x, m, k, k),
            MatRef::transposed(&panel[..rows * k], k, rows, k),
            1.0,
        )?;
    }
    Ok(out)
}

/// `y[n] = W[n][k] · x`, each row's blocks dotted with x without dequantizing it first
/// (`quant::dot`), rows split over threads: the decode path.
fn matvec_rows(
    ty: GgmlType,
    bytes: &[u8],
    row_bytes: usize,
    x: &[f32],
    n: usize,
    threads: usize,
) -> Result<Vec<f32>, ModelError> {
    let input = dot::DotInput::new(x);
    let mut y = vec![0.0f32; n];
    let per = n.div_ceil(threads.max(1)).max(1);
    let input = &input;
    cpu_pool::for_chunks(threads, &mut y, per, "matvec", |c, ys| {
        for (i, yi) in ys.iter_mut().enumerate() {
            let r = c * per + i;
            let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
            *yi = dot::dot_row(ty, row, input).unwrap_or(f32::NAN);
        }
    })?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvedge_runtime::quant::random_blocks;
    use kvedge_runtime::rng::SplitMix64;

    /// `matmul_rows` (gemm over dequantized panels, or the fused matvec for one token)
    /// against dequantize + f64 dot, on fresh random weights of every main weight type,
    /// odd token counts and row counts that split unevenly over threads and panels.
    #[test]
    fn matmul_rows_matches_an_f64_reference() {
        let mut rng = SplitMix64::new(0x6d61_746d);
        let cases = [
            (GgmlType::Q4_1, 64, 37, 1, 1),
            (GgmlType::Q4_1, 576, 301, 7, 3),
            (GgmlType::Q4_K, 512, 131, 5, 2),
            (GgmlType::Q6_K, 256, 513, 2, 3),
            (GgmlType::Q8_0, 96, 9, 33, 2),
            (GgmlType::F16, 40, 3, 4, 1),
            (GgmlType::Q4_0, 2048, 70, 3, 2),
        ];
        for (ty, k, n, m, threads) in cases {
            let bytes = random_blocks(ty, k * n, &mut rng).unwrap();
            let info = TensorInfo::in_memory("w", ty, k, n, bytes.len());
            let x: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let y = matmul_rows(&info, &bytes, &x, m, threads).unwrap();
            assert_eq!(y.len(), m * n);
            let row_bytes = bytes.len() / n;
            let mut w = vec![0.0f32; k];
            let mut worst = 0.0f64;
            for r in 0..n {
                dequantize(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], &mut w).unwrap();
                for i in 0..m {
                    let want: f64 = w
                        .iter()
                        .zip(&x[i * k..(i + 1) * k])
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    let scale: f64 = w.iter().map(|&a| (a as f64).abs()).sum::<f64>() + 1.0;
                    worst = worst.max((y[i * n + r] as f64 - want).abs() / scale);
                }
            }
            assert!(
                worst < 1e-6,
                "{ty} k {k} n {n} m {m} threads {threads}: relative error {worst}"
            );
        }
        // A wrong activation length is an error, not a panic.
        let bytes = random_blocks(GgmlType::Q8_0, 64, &mut rng).unwrap();
        let info = TensorInfo::in_memory("w", GgmlType::Q8_0, 32, 2, bytes.len());
        assert!(matmul_rows(&info, &bytes, &[0.0; 33], 1, 1).is_err());
    }

    /// `gemm_f32` against a plain triple loop on strided views (a transposed operand, a
    /// row stride wider than the row, a scale, a destination wider than the result), and
    /// views or destinations that do not fit are errors.
    #[test]
    fn gemm_f32_matches_loops_and_checks_its_views() {
        let mut rng = SplitMix64::new(0x6765_6d6d);
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (32, 64, 65)] {
            let a: Vec<f32> = (0..m * (k + 3)).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let bt: Vec<f32> = (0..n * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let stride = n + 2;
            let mut dst = vec![f32::NAN; m * stride];
            let (av, bv) = (
                MatRef::rows(&a, m, k, k + 3),
                MatRef::transposed(&bt, k, n, k),
            );
            gemm_f32(&mut dst, stride, av, bv, 0.5).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|l| a[i * (k + 3) + l] as f64 * bt[j * k + l] as f64)
                        .sum::<f64>()
                        * 0.5;
                    let got = dst[i * stride + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5 * (k as f64),
                        "{m}x{k}x{n} ({i},{j})"
                    );
                }
                // Beyond the result's columns, dst is untouched.
                assert!(dst[i * stride + n].is_nan());
            }
        }
        let a = [1.0f32; 12];
        let mut dst = [0.0f32; 9];
        // b reads one value past its slice.
        let short_b = MatRef::rows(&a[..8], 4, 3, 2);
        assert!(gemm_f32(&mut dst, 3, MatRef::rows(&a, 3, 4, 4), short_b, 1.0).is_err());
        // Inner sizes differ.
        let b = MatRef::rows(&a, 3, 3, 3);
        assert!(gemm_f32(&mut dst, 3, MatRef::rows(&a, 3, 4, 4), b, 1.0).is_err());
        // The result does not fit dst.
        let b = MatRef::rows(&a, 4, 3, 3);
        assert!(gemm_f32(&mut dst[..8], 3, MatRef::rows(&a, 3, 4, 4), b, 1.0).is_err());
    }
}
