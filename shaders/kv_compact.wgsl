// Gather the kept slots of one layer's cache into a second buffer of the same layout:
// dst[kv_head][i] = src[kv_head][kept[kv_head][i]] for i < keep, for K and V (rows of
// k_words / v_words u32 words, whatever their storage type) and, when the policy keeps
// running scores, the score of each slot. The caller then swaps the two buffers, so
// compaction never reads what it overwrites. The source may hold more slots per head
// (src_capacity) than the destination (capacity): NACL's one-shot eviction gathers from
// a staging buffer of cache + prompt chunk. One thread per (KV head, kept slot, word).

struct Params {
    k_words: u32,
    v_words: u32,
    n_kv_heads: u32,
    keep: u32,
    capacity: u32,
    has_score: u32,
    grid_x: u32,
    src_capacity: u32,
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
    let words = max(p.k_words, p.v_words);
    let id = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (id >= p.n_kv_heads * p.keep * words) {
        return;
    }
    let w = id % words;
    let i = (id / words) % p.keep;
    let h = id / (words * p.keep);
    let from_slot = kept[h * p.keep + i];
    if (w < p.k_words) {
        dst_k[(h * p.capacity + i) * p.k_words + w] = src_k[(h * p.src_capacity + from_slot) * p.k_words + w];
    }
    if (w < p.v_words) {
        dst_v[(h * p.capacity + i) * p.v_words + w] = src_v[(h * p.src_capacity + from_slot) * p.v_words + w];
    }
    if (p.has_score == 1u && w == 0u) {
        dst_s[h * p.capacity + i] = src_s[h * p.src_capacity + from_slot];
    }
}
