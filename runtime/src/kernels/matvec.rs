//! Dequantizing matrix-vector product `y = W x` (`shaders/matvec.wgsl`), the decode hot
//! path: every weight is read once per token, so its speed is the memory bandwidth it
//! reaches. W stays in its GGUF encoding; a workgroup takes one or several rows (about
//! four 32-weight units per thread), dequantizes their units in registers and reduces
//! each row's partial dot products in workgroup memory. For the
//! types decode reads most (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) dequantization and dot are one
//! fused step per unit (`shaders/common/dot_unit.wgsl`): four weights at a time, each
//! block's scale and min applied once to the sums.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, quant_pipeline_with};
use crate::gpu::{grid, GpuContext, GpuMatrix};
use crate::quant::{dequantize_row, GgmlType};
use crate::Result;

const WGSL: &str = include_str!("../../../shaders/matvec.wgsl");
const DOT_UNIT_WGSL: &str = include_str!("../../../shaders/common/dot_unit.wgsl");

/// `unit_dot` from `decode_unit` (any type; zero past `ncols` in float rows).
const GENERIC_UNIT_DOT: &str = r"
fn unit_dot(rb: u32, u: u32, ncols: u32, xb: u32) -> f32 {
    decode_unit(rb, u, ncols);
    var s = 0.0;
    for (var i = 0u; i < min(32u, ncols - xb); i++) {
        s += dq[i] * x[xb + i];
    }
    return s;
}
";

/// The shader's `unit_dot` for `ty`: the fused function of `dot_unit.wgsl` where it has
/// one (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K), else the unit decoded into `dq` and dotted with x in
/// a loop. Static text, so a dispatch builds nothing.
fn unit_dot_glue(ty: GgmlType) -> &'static str {
    macro_rules! fused {
        ($f:literal) => {
            concat!(
                "fn unit_dot(rb: u32, u: u32, ncols: u32, xb: u32) -> f32 { return ",
                $f,
                "(rb, u, xb); }\n"
            )
        };
    }
    match ty {
        GgmlType::Q4_0 => fused!("dot_unit_q4_0"),
        GgmlType::Q4_1 => fused!("dot_unit_q4_1"),
        GgmlType::Q8_0 => fused!("dot_unit_q8_0"),
        GgmlType::Q4_K => fused!("dot_unit_q4_k"),
        GgmlType::Q6_K => fused!("dot_unit_q6_k"),
        _ => GENERIC_UNIT_DOT,
    }
}

/// Mirrors `Params` in matvec.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatvecParams {
    pub ncols: u32,
    pub nrows: u32,
    pub row_bytes: u32,
    pub y_offset: u32,
    pub units: u32,
    pub grid_x: u32,
    pub lanes: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<MatvecParams>() == 32);

/// Threads per row for rows of `units` 32-weight units: about four units each, a power
/// of two from 4 to 64, so that short rows (SmolLM2's 576 columns are 18 units) share a
/// workgroup instead of leaving most of its 64 threads idle, and long rows still spread
/// over a whole workgroup.
fn lanes_per_row(units: u32) -> u32 {
    units.div_ceil(4).next_power_of_two().clamp(4, 64)
}

/// Record `y[0..w.nrows] = W x` into `encoder`; `x` holds `w.ncols` f32, `y` at least
/// `w.nrows`.
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
) -> Result<()> {
    need_f32("matvec x", x, w.ncols as usize)?;
    need_f32("matvec y", y, w.nrows as usize)?;
    let glue = unit_dot_glue(w.ty);
    let pipeline = quant_pipeline_with(ctx, "matvec", &[DOT_UNIT_WGSL, glue], WGSL, w.ty)?;
    let units = w.ncols.div_ceil(32);
    let lanes = lanes_per_row(units);
    for chunk in &w.chunks {
        let groups = grid(chunk.n_rows.div_ceil(64 / lanes), ctx.max_groups());
        let params = MatvecParams {
            ncols: w.ncols,
            nrows: chunk.n_rows,
            row_bytes: w.row_bytes,
            y_offset: chunk.first_row,
            units,
            grid_x: groups.0,
            lanes,
            _pad: 0,
        };
        let ub = ctx.uniform("matvec.params", &params);
        let bg = ctx.bind("matvec", &pipeline, &[&chunk.buffer, x, y, &ub]);
        ctx.dispatch(encoder, "matvec", &pipeline, &bg, groups);
    }
    Ok(())
}

/// CPU reference: dequantize each row and take its dot product with `x` in f64.
pub fn reference(
    ty: GgmlType,
    w: &[u8],
    ncols: usize,
    nrows: usize,
    x: &[f32],
) -> Result<Vec<f32>> {
    (0..nrows)
        .map(|r| {
            let row = dequantize_row(ty, w, ncols, r)?;
            Ok(row
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DeviceOptions;
    use crate::kernels::check::{assert_close, test_context, test_seed};
    use crate::quant::random_blocks;
    use crate::rng::SplitMix64;

    fn run(ctx: &GpuContext, ty: GgmlType, ncols: usize, nrows: usize, seed: u64) {
        let mut rng = SplitMix64::new(test_seed(seed));
        let w = random_blocks(ty, ncols * nrows, &mut rng).unwrap();
        let x = rng.vec_f32(ncols, -1.0, 1.0);
        let want = reference(ty, &w, ncols, nrows, &x).unwrap();
        let gw = GpuMatrix::upload(ctx, "w", ty, ncols, nrows, &w).unwrap();
        let gx = ctx.upload("x", &x).unwrap();
        let gy = ctx.storage_f32("y", nrows).unwrap();
        let mut enc = ctx.encoder("test");
        record(ctx, &mut enc, &gw, &gx, &gy).unwrap();
        ctx.submit_wait(enc).unwrap();
        let got = ctx.read_f32(&gy, nrows).unwrap();
        assert_close(&format!("matvec {ty} {nrows}x{ncols}"), &got, &want, 1e-4);
    }

    #[test]
    fn matvec_matches_reference_for_every_type() {
        let Some(ctx) = test_context() else { return };
        for (i, &ty) in GgmlType::compute_types().iter().enumerate() {
            let be = ty.block_elems();
            // Odd row counts; columns that are not multiples of 64 (the workgroup) and,
            // for float types, not even multiples of 32 (the unit).
            let ncols = if be == 1 { 77 } else { be * 3 };
            run(ctx, ty, ncols, 37, 100 + i as u64);
            let ncols = if be == 1 { 1000 } else { be * 9 };
            run(ctx, ty, ncols, 5, 200 + i as u64);
        }
    }

    /// Every thread count per row the kernel picks (4 to 64), with row counts that leave
    /// the last workgroup partly empty.
    #[test]
    fn matvec_for_every_lane_count() {
        assert_eq!(
            [1, 18, 48, 128, 280, 10_000].map(lanes_per_row),
            [4, 8, 16, 32, 64, 64]
        );
        let Some(ctx) = test_context() else { return };
        for (i, (ty, ncols, nrows)) in [
            (GgmlType::Q4_1, 576, 9),
            (GgmlType::Q8_0, 1536, 7),
            (GgmlType::Q4_K, 4096, 3),
            (GgmlType::Q6_K, 8960, 2),
            (GgmlType::Q5_K, 8960, 1),
        ]
        .into_iter()
        .enumerate()
        {
            run(ctx, ty, ncols, nrows, 300 + i as u64);
        }
    }

    #[test]
    fn matvec_over_chunked_weights() {
        // Force tiny bindings so the matrix is split into several chunks.
        if test_context().is_none() {
            return;
        }
        let ctx = GpuContext::new(&DeviceOptions {
            max_binding_bytes: Some(4096),
            ..Default::default()
        })
        .unwrap();
        let (ty, ncols, nrows) = (GgmlType::Q4_K, 512, 61);
        let mut rng = SplitMix64::new(test_seed(7));
        let w = random_blocks(ty, ncols * nrows, &mut rng).unwrap();
        let gw = GpuMatrix::upload(&ctx, "w", ty, ncols, nrows, &w).unwrap();
        assert!(
            gw.chunks.len() > 3,
            "expected several chunks, got {}",
            gw.chunks.len()
        );
        run(&ctx, ty, ncols, nrows, 7);
    }

    #[test]
    fn matvec_without_optional_features() {
        if test_context().is_none() {
            return;
        }
        let ctx = GpuContext::new(&DeviceOptions {
            allow_f16: false,
            allow_subgroup: false,
            ..Default::default()
        })
        .unwrap();
        assert!(!ctx.features.shader_f16 && !ctx.features.subgroup);
        run(&ctx, GgmlType::Q6_K, 256 * 2, 19, 11);
        run(&ctx, GgmlType::F16, 45, 19, 12);
    }
}
