// Write the K and V of new tokens into one layer of the KV cache, in place, in the cache's
// storage types: row (kv_head, slot0 + t) = encode(x[t][kv_head][:]). Rows are
// k_row_words / v_row_words u32 words (see common/kv_format.wgsl), laid out
// [kv_head][capacity][row]. One thread per (token, KV head) row, K and V together.

struct Params {
    head_dim: u32,
    n_kv_heads: u32,
    n_tokens: u32,
    capacity: u32,
    slot0: u32,
    grid_x: u32,
    v_dim: u32, // V rows' width (head_dim, or a Palu latent rank)
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<u32>;
@group(0) @binding(3) var<storage, read_write> vc: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (id >= p.n_tokens * p.n_kv_heads) {
        return;
    }
    let h = id % p.n_kv_heads;
    let t = id / p.n_kv_heads;
    let hd = p.head_dim;
    let src = (t * p.n_kv_heads + h) * hd;
    let slot = h * p.capacity + p.slot0 + t;
    k_store(slot * k_row_words(hd), src, hd);
    let vd = p.v_dim;
    v_store(slot * v_row_words(vd), (t * p.n_kv_heads + h) * vd, vd);
}
