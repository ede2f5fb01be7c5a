//! Embedding gather from a quantized table, `out[t] = dequant(table[ids[t]])`
//! (`shaders/embed.wgsl`): the table stays in its GGUF encoding on the GPU, only the rows
//! of the given tokens are decoded. A table split into chunks is gathered chunk by chunk.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, quant_pipeline, to_u32};
use crate::gpu::{grid, GpuContext, GpuMatrix};
use crate::quant::{dequantize_row, GgmlType};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/embed.wgsl");

/// Mirrors `Params` in embed.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EmbedParams {
    pub ncols: u32,
    pub row_bytes: u32,
    pub n_tokens: u32,
    pub row_begin: u32,
    pub nrows: u32,
    pub units: u32,
    pub grid_x: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<EmbedParams>() == 32);

/// Record the gather of `n_tokens` rows of `table` at `ids` (a u32 buffer) into `out`
/// ([n_tokens][table.ncols] f32). Ids must be below `table.nrows` (checked by the caller,
/// which holds them on the host: see [`check_ids`]).
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    table: &GpuMatrix,
    ids: &wgpu::Buffer,
    n_tokens: usize,
    out: &wgpu::Buffer,
) -> Result<()> {
    need_f32("embed ids", ids, n_tokens)?;
    need_f32("embed out", out, n_tokens * table.ncols as usize)?;
    let pipeline = quant_pipeline(ctx, "embed", WGSL, table.ty)?;
    let groups = grid(to_u32("embed tokens", n_tokens)?, ctx.max_groups());
    for chunk in &table.chunks {
        let params = EmbedParams {
            ncols: table.ncols,
            row_bytes: table.row_bytes,
            n_tokens: n_tokens as u32,
            row_begin: chunk.first_row,
            nrows: chunk.n_rows,
            units: table.ncols.div_ceil(32),
            grid_x: groups.0,
            _pad: 0,
        };
        let ub = ctx.uniform("embed.params", &params);
        let bg = ctx.bind("embed", &pipeline, &[&chunk.buffer, ids, out, &ub]);
        ctx.dispatch(encoder, "embed", &pipeline, &bg, groups);
    }
    Ok(())
}

/// Every id must name a row of a table of `nrows` rows.
pub fn check_ids(ids: &[u32], nrows: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= nrows) {
        Some(p) => Err(Error::InvalidArgument(format!(
            "token id {} at position {p} is outside the vocabulary of {nrows}",
            ids[p]
        ))),
        None => Ok(()),
    }
}

/// CPU reference.
pub fn reference(
    ty: GgmlType,
    table: &[u8],
    ncols: usize,
    nrows: usize,
    ids: &[u32],
) -> Result<Vec<f32>> {
    check_ids(ids, nrows)?;
    let mut out = Vec::with_capacity(ids.len() * ncols);
    for &id in ids {
        out.extend(dequantize_row(ty, table, ncols, id as usize)?);
    }
    Ok(out)
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
        let table = random_blocks(ty, ncols * nrows, &mut rng).unwrap();
        let ids: Vec<u32> = (0..11).map(|_| rng.below(nrows as u64) as u32).collect();
        let want = reference(ty, &table, ncols, nrows, &ids).unwrap();
        let gt = GpuMatrix::upload(ctx, "table", ty, ncols, nrows, &table).unwrap();
        let gi = ctx.upload("ids", &ids).unwrap();
        let out = ctx.storage_f32("out", ids.len() * ncols).unwrap();
        let mut enc = ctx.encoder("test");
        record(ctx, &mut enc, &gt, &gi, ids.len(), &out).unwrap();
        ctx.submit_wait(enc).unwrap();
        let got = ctx.read_f32(&out, want.len()).unwrap();
        assert_close(&format!("embed {ty} {nrows}x{ncols}"), &got, &want, 1e-6);
    }

    #[test]
    fn embed_matches_reference_for_every_type() {
        let Some(ctx) = test_context() else { return };
        for (i, &ty) in GgmlType::compute_types().iter().enumerate() {
            let ncols = if ty.block_elems() == 1 {
                75
            } else {
                ty.block_elems() * 3
            };
            run(ctx, ty, ncols, 29, 500 + i as u64);
        }
    }

    #[test]
    fn embed_over_chunked_table() {
        if test_context().is_none() {
            return;
        }
        let ctx = GpuContext::new(&DeviceOptions {
            max_binding_bytes: Some(12288),
            ..Default::default()
        })
        .unwrap();
        let mut rng = SplitMix64::new(test_seed(9));
        let table = random_blocks(GgmlType::Q6_K, 256 * 200, &mut rng).unwrap();
        let gt = GpuMatrix::upload(&ctx, "table", GgmlType::Q6_K, 256, 200, &table).unwrap();
        assert!(
            gt.chunks.len() >= 4,
            "expected several chunks, got {}",
            gt.chunks.len()
        );
        run(&ctx, GgmlType::Q6_K, 256, 200, 9);
    }

    #[test]
    fn embed_rejects_out_of_vocabulary_ids() {
        assert!(check_ids(&[0, 5, 40], 40).is_err());
        assert!(check_ids(&[0, 39], 40).is_ok());
    }
}
