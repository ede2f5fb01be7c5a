// Gather the kept slots of one layer's cache into a second buffer of the same layout:
// dst[kv_head][i] = src[kv_head][kept[kv_head][i]] for i < keep, for K and V (f16 pairs
// per u32 word) and, when the policy keeps running scores, the score of each slot. The
// caller then swaps the two buffers, so compaction never reads what it overwrites. One
// thread per (KV head, kept slot, word).

struct Params {
    head_dim: u32,
    n_kv_heads: u32,
    keep: u32,
    capacity: u32,
    has_score: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> kept: array<u32>;
@group(0) @binding(1) var<storage, read> src_k: array<u32>;
@group(0) @binding(2) var<storage, read> src_v: array<u32>;
@group(0) @binding(3) var<storage, read> src_s: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst_k: array<u32>;
@group(0) @binding(5) var<storage, read_write> dst_v: array<u32>;
@group(0) @binding(6) var<storage, read_write> dst_s: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let id = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (id >= p.n_kv_heads * p.keep * half) {
        return;
    }
    let w = id % half;
    let i = (id / half) % p.keep;
    let h = id / (half * p.keep);
    let from_slot = kept[h * p.keep + i];
    let src = (h * p.capacity + from_slot) * half + w;
    let dst = (h * p.capacity + i) * half + w;
    dst_k[dst] = src_k[src];
    dst_v[dst] = src_v[src];
    if (p.has_score == 1u && w == 0u) {
        dst_s[h * p.capacity + i] = src_s[h * p.capacity + from_slot];
    }
}
