// Rotary position embedding (RoFormer, Su et al. 2021), in place on x laid out as
// [token][head][head_dim]. Pair i of the first n_rot dims of each head rotates by
// pos * freq_scale * freq_base^(-2i/n_rot). GGUF llama-arch weights pair adjacent dims (2i, 2i+1);
// qwen2/neox-style pair dim i with i + n_rot/2 (`neox` = 1). One thread per pair.

struct Params {
    head_dim: u32,
    n_heads: u32,
    n_tokens: u32,
    n_rot: u32,
    freq_base: f32,
    neox: u32,
    grid_x: u32,
    freq_scale: f32, // linear context scaling: positions are multiplied by this
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> pos: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let half = p.n_rot / 2u;
    let id = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (id >= p.n_tokens * p.n_heads * half) {
        return;
    }
    let i = id % half;
    let head = (id / half) % p.n_heads;
    let tok = id / (half * p.n_heads);
    let theta = f32(pos[tok]) * p.freq_scale * pow(p.freq_base, -2.0 * f32(i) / f32(p.n_rot));
    let c = cos(theta);
    let s = sin(theta);
    let base = (tok * p.n_heads + head) * p.head_dim;
    var a: u32;
    var b: u32;
    if (p.neox != 0u) {
        a = base + i;
        b = base + i + half;
    } else {
        a = base + 2u * i;
        b = a + 1u;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
