// Write the K and V of new tokens into the f16 KV cache of one layer, in place:
// cache[kv_head][slot0 + t][d] = f16(x[t][kv_head][d]). The cache is array<u32> holding two
// f16 per word (head_dim is even), laid out [kv_head][capacity][head_dim]. One thread per
// pair of dims of one token and head, for K and V together.

struct Params {
    head_dim: u32,
    n_kv_heads: u32,
    n_tokens: u32,
    capacity: u32,
    slot0: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> kc: array<u32>;
@group(0) @binding(3) var<storage, read_write> vc: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let pairs = p.head_dim / 2u;
    let id = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (id >= p.n_tokens * p.n_kv_heads * pairs) {
        return;
    }
    let i = id % pairs;
    let h = (id / pairs) % p.n_kv_heads;
    let t = id / (pairs * p.n_kv_heads);
    let src = (t * p.n_kv_heads + h) * p.head_dim + 2u * i;
    let dst = ((h * p.capacity + p.slot0 + t) * p.head_dim) / 2u + i;
    kc[dst] = pack2x16float(vec2<f32>(k[src], k[src + 1u]));
    vc[dst] = pack2x16float(vec2<f32>(v[src], v[src + 1u]));
}
