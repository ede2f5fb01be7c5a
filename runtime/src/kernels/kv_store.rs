//! Store new tokens' K and V into one layer of the KV cache at consecutive slots, encoded
//! in the cache's storage types (`shaders/kv_store.wgsl`, `kv::format`). K must already
//! carry RoPE.

use bytemuck::{Pod, Zeroable};

use super::{kv_pipeline, need_f32, to_u32, KvAccess};
use crate::gpu::{grid, GpuContext};
use crate::kv::{encode_block_q4c, encode_row, KvCacheConfig, KvType, Q4C_SLOTS};
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/kv_store.wgsl");

/// Mirrors `Params` in kv_store.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct KvStoreParams {
    pub head_dim: u32,
    pub n_kv_heads: u32,
    pub n_tokens: u32,
    pub capacity: u32,
    pub slot0: u32,
    pub grid_x: u32,
    /// Width of V's rows (equal to `head_dim` except for Palu latents).
    pub v_dim: u32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<KvStoreParams>() == 32);

/// Record the store of `n_tokens` tokens of `k` and `v` ([n_tokens][n_kv_heads][head_dim]
/// f32) into `kc`/`vc` at slots `slot0..slot0 + n_tokens`.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    kc: &wgpu::Buffer,
    vc: &wgpu::Buffer,
    n_tokens: usize,
    slot0: usize,
) -> Result<()> {
    record_split(
        ctx,
        encoder,
        cfg,
        cfg.head_dim,
        k,
        v,
        kc,
        vc,
        n_tokens,
        slot0,
    )
}

/// [`record`] with V rows `v_dim` wide instead of `cfg.head_dim` (Palu latents of
/// different K and V ranks); `vc` is laid out with that width.
#[allow(clippy::too_many_arguments)]
pub fn record_split(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    cfg: &KvCacheConfig,
    v_dim: usize,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    kc: &wgpu::Buffer,
    vc: &wgpu::Buffer,
    n_tokens: usize,
    slot0: usize,
) -> Result<()> {
    let vcfg = KvCacheConfig {
        head_dim: v_dim,
        ..*cfg
    };
    if !cfg.v_type.supports(v_dim) {
        return Err(Error::InvalidArgument(format!(
            "kv_store: V type {} cannot store rows of {v_dim}",
            cfg.v_type.name()
        )));
    }
    if slot0 + n_tokens > cfg.capacity {
        return Err(Error::InvalidArgument(format!(
            "kv_store: slots {slot0}..{} exceed the capacity {}",
            slot0 + n_tokens,
            cfg.capacity
        )));
    }
    let n = n_tokens * cfg.n_kv_heads * cfg.head_dim;
    need_f32("kv_store k", k, n)?;
    need_f32("kv_store v", v, n_tokens * cfg.n_kv_heads * v_dim)?;
    need_f32("kv_store k cache", kc, cfg.k_layer_words())?;
    need_f32("kv_store v cache", vc, vcfg.v_layer_words())?;
    let access = KvAccess {
        k: cfg.k_type,
        v: Some(cfg.v_type),
        encode: true,
    };
    let pipeline = kv_pipeline(ctx, "kv_store", WGSL, &access)?;
    let rows = n_tokens * cfg.n_kv_heads;
    let groups = grid(to_u32("kv_store", rows)?.div_ceil(64), ctx.max_groups());
    let params = KvStoreParams {
        head_dim: cfg.head_dim as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        n_tokens: n_tokens as u32,
        capacity: cfg.capacity as u32,
        slot0: slot0 as u32,
        grid_x: groups.0,
        v_dim: v_dim as u32,
        _pad: 0,
    };
    let ub = ctx.uniform("kv_store.params", &params);
    let bg = ctx.bind("kv_store", &pipeline, &[k, v, kc, vc, &ub]);
    ctx.dispatch(encoder, "kv_store", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference: encode `n_tokens` rows of `x` as `ty` into a cache of u32 words laid
/// out [kv_head][capacity][row] (K with `cfg.k_type`, V with `cfg.v_type`).
pub fn reference(
    cfg: &KvCacheConfig,
    ty: KvType,
    x: &[f32],
    cache: &mut [u32],
    n_tokens: usize,
    slot0: usize,
) {
    let (hd, row) = (cfg.head_dim, ty.row_words(cfg.head_dim));
    for t in 0..n_tokens {
        for h in 0..cfg.n_kv_heads {
            let src = (t * cfg.n_kv_heads + h) * hd;
            let dst = (h * cfg.capacity + slot0 + t) * row;
            encode_row(ty, &x[src..src + hd], &mut cache[dst..dst + row]);
        }
    }
}

/// CPU reference of the store into a `q4c` cache (`kv::format`): the rows of `x`
/// ([n_tokens][n_kv_heads][width]) go to slots `slot0..` of each head; `pending`
/// ([n_kv_heads][32][width]) keeps the values of each head's block that is still filling,
/// and every block the tokens touch is re-encoded whole from it, so a partly filled block
/// always reads as the quantization of the slots it has.
pub fn reference_q4c(
    cfg: &KvCacheConfig,
    width: usize,
    x: &[f32],
    cache: &mut [u32],
    pending: &mut [f32],
    n_tokens: usize,
    slot0: usize,
) {
    let rw = KvType::Q4C.row_words(width);
    for h in 0..cfg.n_kv_heads {
        let pend = &mut pending[h * Q4C_SLOTS * width..(h + 1) * Q4C_SLOTS * width];
        for t in 0..n_tokens {
            let (s, src) = (slot0 + t, (t * cfg.n_kv_heads + h) * width);
            let r = s % Q4C_SLOTS;
            pend[r * width..(r + 1) * width].copy_from_slice(&x[src..src + width]);
            if r == Q4C_SLOTS - 1 || t + 1 == n_tokens {
                let b0 = (h * cfg.capacity + s - r) * rw;
                encode_block_q4c(pend, r + 1, width, &mut cache[b0..b0 + Q4C_SLOTS * rw]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::{test_context, test_seed};
    use crate::kv::decode_row;
    use crate::rng::SplitMix64;

    /// Storing a q4c cache a piece at a time (a prompt chunk, then single decode tokens,
    /// across block boundaries) leaves exactly the cache one store of all the tokens
    /// makes: each block is re-encoded from the pending values until it is full.
    #[test]
    fn q4c_store_in_pieces_equals_one_store() {
        let mut rng = SplitMix64::new(test_seed(21));
        for (hd, nkv) in [(64, 2), (32, 3), (128, 1)] {
            let cfg = KvCacheConfig {
                n_layers: 1,
                n_kv_heads: nkv,
                head_dim: hd,
                capacity: 96,
                k_type: KvType::Q4C,
                v_type: KvType::Q4,
            };
            let n = 77;
            let x = rng.vec_f32(n * nkv * hd, -3.0, 3.0);
            let words = cfg.k_layer_words();
            let (mut whole, mut pend_w) = (vec![0u32; words], vec![0.0; cfg.k_pending_words()]);
            reference_q4c(&cfg, hd, &x, &mut whole, &mut pend_w, n, 0);
            let (mut parts, mut pend_p) = (vec![0u32; words], vec![0.0; cfg.k_pending_words()]);
            let mut at = 0;
            for m in [40, 1, 1, 20, 1, 14] {
                let src = &x[at * nkv * hd..(at + m) * nkv * hd];
                reference_q4c(&cfg, hd, src, &mut parts, &mut pend_p, m, at);
                at += m;
            }
            assert_eq!(at, n);
            assert_eq!(parts, whole, "hd {hd} heads {nkv}");
        }
    }

    /// GPU and CPU encodings decode to the same values, except where a value sits on a
    /// rounding boundary of x/d (the GPU's division may differ in the last bit): there one
    /// code may differ by one step, in at most 1 % of the values.
    #[test]
    fn kv_store_matches_reference_for_every_type() {
        let Some(ctx) = test_context() else { return };
        let mut rng = SplitMix64::new(test_seed(321));
        // (K type, V type, K width, V width): V rows of another width are Palu latents.
        for (kt, vt, hd, vd) in [
            (KvType::F16, KvType::F16, 46, 46),
            (KvType::Q8, KvType::Q8, 64, 64),
            (KvType::Q4, KvType::Q4, 128, 128),
            (KvType::Q8, KvType::Q4, 96, 96),
            (KvType::Q8, KvType::Q4, 64, 160),
            (KvType::F16, KvType::F16, 46, 20),
        ] {
            let (nkv, n, slot0) = (3, 7, 5);
            let cfg = KvCacheConfig {
                k_type: kt,
                v_type: vt,
                ..KvCacheConfig::f16(1, nkv, hd, slot0 + n + 2)
            };
            let vcfg = KvCacheConfig {
                head_dim: vd,
                ..cfg
            };
            let k = rng.vec_f32(n * nkv * hd, -3.0, 3.0);
            let v = rng.vec_f32(n * nkv * vd, -1.0, 1.0);
            let (gk, gv) = (ctx.upload("k", &k).unwrap(), ctx.upload("v", &v).unwrap());
            let kc = ctx.storage_f32("kc", cfg.k_layer_words()).unwrap();
            let vc = ctx.storage_f32("vc", vcfg.v_layer_words()).unwrap();
            let mut enc = ctx.encoder("test");
            record_split(ctx, &mut enc, &cfg, vd, &gk, &gv, &kc, &vc, n, slot0).unwrap();
            ctx.submit_wait(enc).unwrap();
            for (name, ty, x, buf, c) in [("K", kt, &k, &kc, cfg), ("V", vt, &v, &vc, vcfg)] {
                let hd = c.head_dim;
                let row = ty.row_words(hd);
                let words = c.n_kv_heads * c.capacity * row;
                let got: Vec<u32> = ctx
                    .read_f32(buf, words)
                    .unwrap()
                    .iter()
                    .map(|f| f.to_bits())
                    .collect();
                let mut want = vec![0u32; words];
                reference(&c, ty, x, &mut want, n, slot0);
                let (mut flips, mut total) = (0usize, 0usize);
                for h in 0..nkv {
                    for t in slot0..slot0 + n {
                        let r = (h * c.capacity + t) * row;
                        let (mut a, mut b) = (vec![0.0; hd], vec![0.0; hd]);
                        decode_row(ty, &got[r..r + row], &mut a);
                        decode_row(ty, &want[r..r + row], &mut b);
                        let step = b.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 7.0;
                        for (x, y) in a.iter().zip(&b) {
                            total += 1;
                            if x != y {
                                flips += 1;
                                assert!((x - y).abs() <= step * 1.01, "{name} {ty:?}: {x} vs {y}");
                            }
                        }
                    }
                }
                if ty == KvType::F16 {
                    assert_eq!(flips, 0, "{name} f16 rows are exact");
                }
                assert!(
                    flips * 100 <= total,
                    "{name} {ty:?}: {flips} of {total} values differ"
                );
            }
        }
    }
}
