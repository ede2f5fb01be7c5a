// Attention received per cache slot, for the score-based eviction policies (H2O, NACL):
// score[kv_head][j] (+)= sum over the queries t in q0..n_tokens of the chunk and the query
// heads h that read this KV head of softmax probability p(t, h, j), recomputed exactly as
// exp(scale * q·k_j - lse[t][h]) from the log-sum-exp the attention kernel wrote. Causal:
// query t sees slots 0..=n_past + t. With `accumulate` set, slots that already held a
// token (j < n_past) add to their previous score (H2O's running sum); new slots start
// from zero. One thread per (KV head, slot).

struct Params {
    head_dim: u32,
    n_heads: u32,
    n_kv_heads: u32,
    n_tokens: u32,
    capacity: u32,
    n_past: u32,
    q0: u32,
    accumulate: u32,
    scale: f32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> kc: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read_write> score: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n_slots = p.n_past + p.n_tokens;
    let id = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (id >= p.n_kv_heads * n_slots) {
        return;
    }
    let kvh = id / n_slots;
    let j = id % n_slots;
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let kw = (kvh * p.capacity + j) * k_row_words(hd);
    var total = 0.0;
    // The first query that sees slot j: causality needs n_past + t >= j.
    var t = p.q0;
    if (j > p.n_past) {
        t = max(t, j - p.n_past);
    }
    for (; t < p.n_tokens; t++) {
        for (var h = kvh * group; h < (kvh + 1u) * group; h++) {
            let qb = (t * p.n_heads + h) * p.head_dim;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) {
                dot += q[qb + d] * k_at(kw, d, hd);
            }
            total += exp(dot * p.scale - lse[t * p.n_heads + h]);
        }
    }
    let at = kvh * p.capacity + j;
    if (p.accumulate == 1u && j < p.n_past) {
        total += score[at];
    }
    score[at] = total;
}
