//! Writes of the `q4c` KV storage type (`kv::format`; KIVI, Liu et al., arXiv 2402.02750:
//! keys quantized per channel over blocks of 32 slots), `shaders/kv_q4c.wgsl`. A q4c
//! row cannot be written alone: its block's (step, minimum) pairs depend on every slot
//! of the block. So the store keeps the f32 values of each head's block still filling
//! ("pending", [n_kv_heads][32][width]) and encodes the block again from them each time
//! slots arrive; a compaction decodes the kept slots of the source cache and stores them
//! again from slot 0 the same way. The readers (attention, scores) decode rows in place
//! through `shaders/common/kv_format.wgsl`. The CPU references are
//! `kv_store::reference_q4c` and `kv_compact::reference_q4c`.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::GpuContext;
use crate::kv::{KvCacheConfig, KvType, Q4C_SLOTS};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/kv_q4c.wgsl");

/// Mirrors `Params` in kv_q4c.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct KvQ4cParams {
    width: u32,
    n_kv_heads: u32,
    n: u32,
    capacity: u32,
    slot0: u32,
    src_capacity: u32,
    mode: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<KvQ4cParams>() == 32);

/// A q4c buffer of one layer and its pending values.
pub struct Q4cBuffers<'a> {
    pub cache: &'a wgpu::Buffer,
    pub pending: &'a wgpu::Buffer,
}

fn check(cfg: &KvCacheConfig, width: usize, dst: &Q4cBuffers, what: &str) -> Result<()> {
    if !KvType::Q4C.supports(width) || !cfg.capacity.is_multiple_of(Q4C_SLOTS) {
        return Err(Error::InvalidArgument(format!(
            "{what}: q4c needs rows of a multiple of 32 values and a capacity of whole blocks \
             of 32 slots, got rows of {width} and a capacity of {}",
            cfg.capacity
        )));
    }
    let rw = KvType::Q4C.row_words(width);
    need_f32(
        &format!("{what} cache"),
        dst.cache,
        cfg.n_kv_heads * cfg.capacity * rw,
    )?;
    need_f32(
        &format!("{what} pending"),
        dst.pending,
        cfg.n_kv_heads * Q4C_SLOTS * width,
    )
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    params: KvQ4cParams,
    x: &wgpu::Buffer,
    kept: &wgpu::Buffer,
    src: &wgpu::Buffer,
    dst: &Q4cBuffers,
) -> Result<()> {
    if params.n == 0 {
        return Ok(());
    }
    let pipeline = plain_pipeline(ctx, "kv_q4c", WGSL)?;
    let threads = to_u32(
        "kv_q4c",
        params.n_kv_heads as usize * params.width as usize / 8,
    )?;
    let ub = ctx.uniform("kv_q4c.params", &params);
    let bg = ctx.bind(
        "kv_q4c",
        &pipeline,
        &[x, kept, src, dst.cache, dst.pending, &ub],
    );
    ctx.dispatch(encoder, "kv_q4c", &pipeline, &bg, (threads.div_ceil(64), 1));
    Ok(())
}

/// Record the store of `n` rows of `x` ([n][n_kv_heads][width] f32) at slots
/// `slot0..slot0 + n` of each head of `dst` (laid out as `cfg`, rows `width` wide).
#[allow(clippy::too_many_arguments)]
pub fn record_store(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    width: usize,
    x: &wgpu::Buffer,
    dst: &Q4cBuffers,
    n: usize,
    slot0: usize,
) -> Result<()> {
    check(cfg, width, dst, "kv_q4c store")?;
    if slot0 + n > cfg.capacity {
        return Err(Error::InvalidArgument(format!(
            "kv_q4c store: slots {slot0}..{} exceed the capacity {}",
            slot0 + n,
            cfg.capacity
        )));
    }
    need_f32("kv_q4c store x", x, n * cfg.n_kv_heads * width)?;
    let params = KvQ4cParams {
        width: width as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        n: n as u32,
        capacity: cfg.capacity as u32,
        slot0: slot0 as u32,
        src_capacity: 0,
        mode: 0,
        _pad: 0,
    };
    // The source-cache bindings are unused in this mode: `x` stands in (read-only).
    dispatch(ctx, encoder, params, x, x, x, dst)
}

/// Record the compaction of `keep` slots per head (`kept`, [n_kv_heads][keep], ascending
/// slots of `src`, `src_capacity` slots per head) into the front of `dst` (laid out as
/// `cfg`), decoded and encoded again, with `dst`'s pending values refilled.
#[allow(clippy::too_many_arguments)]
pub fn record_compact(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    width: usize,
    src_capacity: usize,
    keep: usize,
    kept: &wgpu::Buffer,
    src: &wgpu::Buffer,
    dst: &Q4cBuffers,
) -> Result<()> {
    check(cfg, width, dst, "kv_q4c compact")?;
    if keep > cfg.capacity || keep > src_capacity || !src_capacity.is_multiple_of(Q4C_SLOTS) {
        return Err(Error::InvalidArgument(format!(
            "kv_q4c compact: {keep} kept slots into {} from {src_capacity} (whole blocks)",
            cfg.capacity
        )));
    }
    let rw = KvType::Q4C.row_words(width);
    need_f32(
        "kv_q4c compact src",
        src,
        cfg.n_kv_heads * src_capacity * rw,
    )?;
    need_f32("kv_q4c compact kept", kept, cfg.n_kv_heads * keep)?;
    let params = KvQ4cParams {
        width: width as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        n: keep as u32,
        capacity: cfg.capacity as u32,
        slot0: 0,
        src_capacity: src_capacity as u32,
        mode: 1,
        _pad: 0,
    };
    // `x` is unused in this mode: `kept` stands in (read-only).
    dispatch(ctx, encoder, params, kept, kept, src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{test_context, test_seed};
    use crate::kernels::{kv_compact, kv_store};
    use crate::kv::decode_slot_q4c;
    use crate::rng::SplitMix64;

    /// Decoded values of every head's first `n` slots, [n_kv_heads][n][width].
    fn decoded(cfg: &KvCacheConfig, width: usize, cache: &[u32], n: usize) -> Vec<f32> {
        let rw = KvType::Q4C.row_words(width);
        let mut out = vec![0.0f32; cfg.n_kv_heads * n * width];
        for h in 0..cfg.n_kv_heads {
            let region = &cache[h * cfg.capacity * rw..(h + 1) * cfg.capacity * rw];
            for j in 0..n {
                let o = &mut out[(h * n + j) * width..(h * n + j + 1) * width];
                decode_slot_q4c(region, width, j, o);
            }
        }
        out
    }

    /// GPU and CPU decode alike, except where a value sits on a rounding boundary (the
    /// GPU's division and f16 packing may differ in the last bit): there a code may
    /// differ by one step of its channel, in at most 1 % of the values.
    fn agree(got: &[f32], want: &[f32], what: &str) {
        let (mut off, mut worst) = (0usize, 0.0f32);
        for (g, w) in got.iter().zip(want) {
            let e = (g - w).abs();
            if e > 1e-3 * w.abs().max(1.0) {
                off += 1;
                worst = worst.max(e);
            }
        }
        assert!(
            off * 100 <= got.len() && worst < 0.6,
            "{what}: {off} of {} values differ, worst by {worst}",
            got.len()
        );
    }

    /// The GPU store, a piece at a time across block boundaries, then a compaction, each
    /// against the CPU references on the same inputs; odd head counts and widths.
    #[test]
    fn q4c_store_and_compaction_match_the_references() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(41));
        for (width, nkv) in [(64, 3), (32, 2), (128, 1)] {
            let cfg = KvCacheConfig {
                n_layers: 1,
                n_kv_heads: nkv,
                head_dim: width,
                capacity: 96,
                k_type: KvType::Q4C,
                v_type: KvType::Q4,
            };
            let rw = KvType::Q4C.row_words(width);
            let words = nkv * cfg.capacity * rw;
            let pend_len = nkv * Q4C_SLOTS * width;
            let cache = ctx.storage_f32("test.q4c.cache", words).unwrap();
            let pending = ctx.storage_f32("test.q4c.pending", pend_len).unwrap();
            let dst = Q4cBuffers {
                cache: &cache,
                pending: &pending,
            };
            let (mut want, mut want_p) = (vec![0u32; words], vec![0.0f32; pend_len]);
            let mut at = 0;
            for m in [40, 1, 1, 21, 1, 13] {
                // Keys-like values: an offset and a spread per channel.
                let x: Vec<f32> = rng
                    .vec_f32(m * nkv * width, -1.0, 1.0)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i % width) as f32 * 0.3 - 5.0 + v * (1.0 + (i % 7) as f32))
                    .collect();
                let xb = ctx.upload("test.q4c.x", &x).unwrap();
                let mut enc = ctx.encoder("test.q4c.store");
                record_store(ctx, &mut enc, &cfg, width, &xb, &dst, m, at).unwrap();
                ctx.submit_wait(enc).unwrap();
                kv_store::reference_q4c(&cfg, width, &x, &mut want, &mut want_p, m, at);
                at += m;
                let got: Vec<u32> =
                    bytemuck::cast_slice(&ctx.read_f32(&cache, words).unwrap()).to_vec();
                agree(
                    &decoded(&cfg, width, &got, at),
                    &decoded(&cfg, width, &want, at),
                    &format!("store width {width} heads {nkv} after {at}"),
                );
            }
            // Compaction: every head keeps its own ascending slots.
            let keep = 50;
            let mut kept = Vec::new();
            for h in 0..nkv {
                let mut s: Vec<u32> = (0..at as u32)
                    .filter(|j| !(j + h as u32).is_multiple_of(3))
                    .collect();
                s.truncate(keep);
                kept.extend(s);
            }
            let kb = ctx.upload("test.q4c.kept", &kept).unwrap();
            let out = ctx.storage_f32("test.q4c.out", words).unwrap();
            let outd = Q4cBuffers {
                cache: &out,
                pending: &pending,
            };
            let mut enc = ctx.encoder("test.q4c.compact");
            record_compact(ctx, &mut enc, &cfg, width, 96, keep, &kb, &cache, &outd).unwrap();
            ctx.submit_wait(enc).unwrap();
            kv_compact::reference_q4c(&cfg, width, keep, &kept, &mut want, &mut want_p);
            let got: Vec<u32> = bytemuck::cast_slice(&ctx.read_f32(&out, words).unwrap()).to_vec();
            agree(
                &decoded(&cfg, width, &got, keep),
                &decoded(&cfg, width, &want, keep),
                &format!("compaction width {width} heads {nkv}"),
            );
            let gp = ctx.read_f32(&pending, pend_len).unwrap();
            agree(&gp, &want_p, &format!("pending width {width} heads {nkv}"));
        }
    }

    #[test]
    fn q4c_refuses_partial_blocks() {
        let Some(ctx) = test_context() else { return };
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: 64,
            capacity: 40,
            k_type: KvType::Q4C,
            v_type: KvType::Q4,
        };
        let b = ctx.storage_f32("test.q4c.b", 4096).unwrap();
        let dst = Q4cBuffers {
            cache: &b,
            pending: &b,
        };
        let mut enc = ctx.encoder("test.q4c.bad");
        let e = record_store(ctx, &mut enc, &cfg, 64, &b, &dst, 1, 0).unwrap_err();
        assert!(e.to_string().contains("whole blocks"), "{e}");
    }
}
