// Rebuild keys or values from Palu latents (runtime/src/kernels/lowrank_rebuild.rs):
// for slot j of group G, y = A_G·h + b_G with h the latent row (r values, read in the
// latent cache's storage type through k_at), A_G the group's [g·head_dim][r] rows of the
// up-projection, b_G its bias; keys then rotate each head by RoPE at the slot's original
// position pos[G][j]; the g heads' rows are written as f16 into an ordinary KV cache
// layout [kv_head][capacity][head_dim/2 words]. One workgroup per (slot, group): the
// latent is decoded once into workgroup memory, each thread computes outputs, rotates
// pairs, and packs words.

struct Params {
    rank: u32,
    head_dim: u32,
    group: u32,      // KV heads per group
    n_groups: u32,
    capacity: u32,   // slots per head, of both the latent cache and the output
    n_slots: u32,
    has_bias: u32,
    rope: u32,
    n_rot: u32,
    freq_base: f32,
    freq_scale: f32,
    neox: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> kc: array<u32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;
@group(0) @binding(5) var<uniform> p: Params;

const MAX_RANK: u32 = 1024u;
const MAX_WIDTH: u32 = 1024u;
var<workgroup> hl: array<f32, MAX_RANK>;
var<workgroup> yv: array<f32, MAX_WIDTH>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let id = wid.x + wid.y * p.grid_x;
    // Uniform over the workgroup, so the barriers below are reached by all or none.
    if (id >= p.n_slots * p.n_groups) {
        return;
    }
    let lid = lid3.x;
    let j = id % p.n_slots;
    let grp = id / p.n_slots;
    let r = p.rank;
    let width = p.group * p.head_dim;
    let lat = (grp * p.capacity + j) * k_row_words(r);
    for (var i = lid; i < r; i += 64u) {
        hl[i] = k_at(lat, i, r);
    }
    workgroupBarrier();
    for (var o = lid; o < width; o += 64u) {
        let row = (grp * width + o) * r;
        var acc = 0.0;
        for (var i = 0u; i < r; i++) {
            acc += up[row + i] * hl[i];
        }
        if (p.has_bias != 0u) {
            acc += bias[grp * width + o];
        }
        yv[o] = acc;
    }
    workgroupBarrier();
    if (p.rope != 0u) {
        let half = p.n_rot / 2u;
        let theta0 = f32(pos[grp * p.capacity + j]) * p.freq_scale;
        for (var q = lid; q < p.group * half; q += 64u) {
            let i = q % half;
            let base = (q / half) * p.head_dim;
            let theta = theta0 * pow(p.freq_base, -2.0 * f32(i) / f32(p.n_rot));
            let c = cos(theta);
            let s = sin(theta);
            var a: u32;
            var b: u32;
            if (p.neox != 0u) {
                a = base + i;
                b = base + i + half;
            } else {
                a = base + 2u * i;
                b = a + 1u;
            }
            let x0 = yv[a];
            let x1 = yv[b];
            yv[a] = x0 * c - x1 * s;
            yv[b] = x0 * s + x1 * c;
        }
        workgroupBarrier();
    }
    let words = p.head_dim / 2u;
    for (var w = lid; w < width / 2u; w += 64u) {
        let head = grp * p.group + w / words;
        let at = (head * p.capacity + j) * words + w % words;
        out[at] = pack2x16float(vec2<f32>(yv[2u * w], yv[2u * w + 1u]));
    }
}
