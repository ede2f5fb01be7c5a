//! Dequantizing matrix-matrix product `Y = X W^T` (`shaders/matmul.wgsl`) for prefill: X is
//! [m, k] f32 activations (m tokens), W is [n, k] in its GGUF encoding. 32x32 output tiles,
//! W dequantized once per tile into workgroup memory.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, quant_pipeline, to_u32};
use crate::gpu::{GpuContext, GpuMatrix};
use crate::quant::{dequantize_row, GgmlType};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/matmul.wgsl");
const TILE: u32 = 32;

/// Mirrors `Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub row_bytes: u32,
    pub n_offset: u32,
    pub ldy: u32,
    pub units: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<MatmulParams>() == 32);

/// Record `Y[m, w.nrows] = X[m, w.ncols] W^T`.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    m: usize,
    y: &wgpu::Buffer,
) -> Result<()> {
    let m32 = to_u32("matmul m", m)?;
    need_f32("matmul x", x, m * w.ncols as usize)?;
    need_f32("matmul y", y, m * w.nrows as usize)?;
    let pipeline = quant_pipeline(ctx, "matmul", WGSL, w.ty)?;
    let gy = m32.div_ceil(TILE);
    if gy > ctx.max_groups() {
        return Err(Error::InvalidArgument(format!(
            "matmul: {m} rows need {gy} workgroups along y, the device allows {}",
            ctx.max_groups()
        )));
    }
    for chunk in &w.chunks {
        let params = MatmulParams {
            m: m32,
            n: chunk.n_rows,
            k: w.ncols,
            row_bytes: w.row_bytes,
            n_offset: chunk.first_row,
            ldy: w.nrows,
            units: w.ncols.div_ceil(32),
            _pad: 0,
        };
        let gx = chunk.n_rows.div_ceil(TILE);
        if gx > ctx.max_groups() {
            return Err(Error::InvalidArgument(format!(
                "matmul: {} weight rows in one chunk need {gx} workgroups, the device allows {}",
                chunk.n_rows,
                ctx.max_groups()
            )));
        }
        let ub = ctx.uniform("matmul.params", &params);
        let bg = ctx.bind("matmul", &pipeline, &[&chunk.buffer, x, y, &ub]);
        ctx.dispatch(encoder, "matmul", &pipeline, &bg, (gx.max(1), gy.max(1)));
    }
    Ok(())
}

/// CPU reference: Y[i, j] = sum_k X[i, k] W[j, k], accumulated in f64.
pub fn reference(
    ty: GgmlType,
    w: &[u8],
    k: usize,
    n: usize,
    x: &[f32],
    m: usize,
) -> Result<Vec<f32>> {
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|j| dequantize_row(ty, w, k, j))
        .collect::<Result<_>>()?;
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for (j, wj) in rows.iter().enumerate() {
            y[i * n + j] = xi
                .iter()
                .zip(wj)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32;
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::quant::random_blocks;
    use crate::rng::SplitMix64;

    #[test]
    fn matmul_matches_reference() {
        let Some(ctx) = test_context() else { return };
        for (i, &ty) in GgmlType::compute_types().iter().enumerate() {
            let be = ty.block_elems();
            // m and n not multiples of the 32x32 tile; k odd for float types.
            let (m, n) = (13 + i, 45);
            let k = if be == 1 { 83 } else { be * 2 };
            let mut rng = SplitMix64::new(test_seed(300 + i as u64));
            let w = random_blocks(ty, k * n, &mut rng).unwrap();
            let x = rng.vec_f32(m * k, -1.0, 1.0);
            let want = reference(ty, &w, k, n, &x, m).unwrap();
            let gw = GpuMatrix::upload(ctx, "w", ty, k, n, &w).unwrap();
            let gx = ctx.upload("x", &x).unwrap();
            let gy = ctx.storage_f32("y", m * n).unwrap();
            let mut enc = ctx.encoder("test");
            record(ctx, &mut enc, &gw, &gx, m, &gy).unwrap();
            ctx.submit_wait(enc).unwrap();
            let got = ctx.read_f32(&gy, m * n).unwrap();
            assert_close(&format!("matmul {ty} {m}x{n}x{k}"), &got, &want, 1e-4);
        }
    }
}
