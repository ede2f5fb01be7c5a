// Causal grouped-query attention over the KV cache in its storage types (f16, q8, q4:
// common/kv_format.wgsl decodes rows in registers), for a chunk of queries (prefill)
// or one (decode). Query t of the chunk is the cache slot n_past + t and attends to cache
// slots 0..=n_past + t; query head h reads KV head h / (n_heads / n_kv_heads).
//
// One workgroup per (query, head). Keys are visited in blocks of WG: each thread scores
// one key of the block (q·k, q pre-scaled), then the block updates a running max m and
// normalizer l (online softmax, as in FlashAttention, Dao et al. 2022) and each thread
// rescales and accumulates the head dims it owns. Memory is O(WG + head_dim) per
// workgroup whatever the context length: no score matrix is ever stored.
//
// The log-sum-exp of each (query, head)'s scaled scores goes to `lse`, so that
// attn_score.wgsl can recompute any single attention probability exactly
// (exp(score - lse)) for the eviction policies without storing the probabilities.
//
// Slots, not positions: with eviction the cache is compacted in slot order, so query t of
// the chunk still attends to slots 0..=n_past + t (RoPE already holds the positions).
//
// Sparse decode (TidalDecode): with n_sel > 0 a single query attends only to the n_sel
// slots listed per KV head in sel[kv_head][0..n_sel] instead of every slot.

struct Params {
    head_dim: u32,
    n_heads: u32,
    n_kv_heads: u32,
    n_tokens: u32,
    capacity: u32,
    n_past: u32,
    scale: f32,
    grid_x: u32,
    n_sel: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> kc: array<u32>;
@group(0) @binding(2) var<storage, read> vc: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read> sel: array<u32>;
@group(0) @binding(6) var<uniform> p: Params;

// The cache slot of the j-th key this query attends to.
fn key_slot(kvh: u32, j: u32) -> u32 {
    if (p.n_sel > 0u) {
        return sel[kvh * p.n_sel + j];
    }
    return j;
}

const WG: u32 = 64u;
const MAX_HD: u32 = 256u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, MAX_HD>;
var<workgroup> prob: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = wid.x + wid.y * p.grid_x;
    if (id >= p.n_tokens * p.n_heads) {
        return;
    }
    let t = id / p.n_heads;
    let h = id % p.n_heads;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let hd = p.head_dim;
    let half = hd / 2u;
    var n_keys = p.n_past + t + 1u;
    if (p.n_sel > 0u) {
        n_keys = p.n_sel;
    }
    let qbase = (t * p.n_heads + h) * hd;
    for (var d = lid.x; d < hd; d += WG) {
        qs[d] = q[qbase + d] * p.scale;
    }
    workgroupBarrier();

    let head_row = kvh * p.capacity; // first row of this KV head
    let krow = k_row_words(hd);
    let vrow = v_row_words(hd);
    var m = NEG;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var kb = 0u; kb < n_keys; kb += WG) {
        let j = kb + lid.x;
        var s = NEG;
        if (j < n_keys) {
            let kw = (head_row + key_slot(kvh, j)) * krow;
            var dot = 0.0;
            if (K_TYPE == 0u) {
                for (var i = 0u; i < half; i++) {
                    let kv = unpack2x16float(kc[kw + i]);
                    dot += qs[2u * i] * kv.x + qs[2u * i + 1u] * kv.y;
                }
            } else {
                for (var d = 0u; d < hd; d++) {
                    dot += qs[d] * k_at(kw, d, hd);
                }
            }
            s = dot;
        }
        prob[lid.x] = s;
        workgroupBarrier();
        var bm = NEG;
        for (var i = 0u; i < WG; i++) {
            bm = max(bm, prob[i]);
        }
        let m_new = max(m, bm);
        workgroupBarrier();
        prob[lid.x] = select(0.0, exp(s - m_new), j < n_keys);
        workgroupBarrier();
        let corr = exp(m - m_new);
        var psum = 0.0;
        for (var i = 0u; i < WG; i++) {
            psum += prob[i];
        }
        l = l * corr + psum;
        let nb = min(WG, n_keys - kb);
        for (var c = 0u; c < 4u; c++) {
            let d = lid.x + c * WG;
            if (d < hd) {
                var a = acc[c] * corr;
                for (var i = 0u; i < nb; i++) {
                    a += prob[i] * v_at((head_row + key_slot(kvh, kb + i)) * vrow, d, hd);
                }
                acc[c] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid.x + c * WG;
        if (d < hd) {
            out[qbase + d] = acc[c] / l;
        }
    }
    if (lid.x == 0u) {
        lse[id] = m + log(l);
    }
}
