//! Store new tokens' K and V into one layer of the f16 KV cache at consecutive slots
//! (`shaders/kv_store.wgsl`). K must already carry RoPE.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::{grid, GpuContext};
use crate::kv::KvCacheConfig;
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
    pub _pad: [u32; 2],
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
    if slot0 + n_tokens > cfg.capacity {
        return Err(Error::InvalidArgument(format!(
            "kv_store: slots {slot0}..{} exceed the capacity {}",
            slot0 + n_tokens,
            cfg.capacity
        )));
    }
    let n = n_tokens * cfg.n_kv_heads * cfg.head_dim;
    need_f32("kv_store k", k, n)?;
    need_f32("kv_store v", v, n)?;
    let pipeline = plain_pipeline(ctx, "kv_store", WGSL)?;
    let groups = grid(to_u32("kv_store", n / 2)?.div_ceil(64), ctx.max_groups());
    let params = KvStoreParams {
        head_dim: cfg.head_dim as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        n_tokens: n_tokens as u32,
        capacity: cfg.capacity as u32,
        slot0: slot0 as u32,
        grid_x: groups.0,
        _pad: [0; 2],
    };
    let ub = ctx.uniform("kv_store.params", &params);
    let bg = ctx.bind("kv_store", &pipeline, &[k, v, kc, vc, &ub]);
    ctx.dispatch(encoder, "kv_store", &pipeline, &bg, groups);
    Ok(())
}

/// CPU reference: store into an f16 cache laid out [kv_head][capacity][head_dim].
pub fn reference(cfg: &KvCacheConfig, x: &[f32], cache: &mut [f16], n_tokens: usize, slot0: usize) {
    for t in 0..n_tokens {
        for h in 0..cfg.n_kv_heads {
            for d in 0..cfg.head_dim {
                let src = (t * cfg.n_kv_heads + h) * cfg.head_dim + d;
                let dst = (h * cfg.capacity + slot0 + t) * cfg.head_dim + d;
                cache[dst] = f16::from_f32(x[src]);
            }
        }
    }
}
