// Choose the cache slots to keep, per KV head, for an eviction: out of the `n` slots in
// use, `keep` survive, listed in ascending slot order in kept[kv_head][0..keep] (so that
// compaction preserves order and attention stays causal by slot).
//
// 1. Protected: the first `sinks` slots (attention sinks, StreamingLLM) and the last
//    `recent` slots.
// 2. By score: the `n_score` unprotected slots of highest score (H2O, NACL). With
//    `pool` > 0 a slot's score is the largest within `pool` slots of it (max-pooling, as
//    SnapKV does), so the neighbours of a strongly attended token are kept with it.
// 3. Random: `n_random` more slots sampled without replacement with probability
//    proportional to softmax(score) over the slots still unchosen (NACL), by the
//    Gumbel-top-k trick: the top n_random of score + Gumbel noise are exactly such a
//    sample. The noise is a hash of (seed, salt, head, slot): the same seed evicts the
//    same slots.
//
// A top-k is a threshold search: bisect the order-preserving u32 key of the value for the
// largest T with at least k unchosen keys >= T (32 counting rounds), take every key > T,
// then the lowest slots with key == T (one thread, in slot order) until k are chosen.
// One workgroup per KV head; mark[] is scratch of the same shape as the scores.

struct Params {
    n: u32,
    keep: u32,
    sinks: u32,
    recent: u32,
    n_score: u32,
    n_random: u32,
    capacity: u32,
    seed: u32,
    salt: u32,
    pool: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> score: array<f32>;
@group(0) @binding(1) var<storage, read_write> mark: array<u32>;
@group(0) @binding(2) var<storage, read_write> kept: array<u32>;
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;

var<workgroup> counter: atomic<u32>;
var<workgroup> seg: array<u32, WG>;

fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

// lowbias32 (Chris Wellons' integer hash).
fn hash(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn gumbel(kvh: u32, j: u32) -> f32 {
    let h = hash(p.seed ^ hash(p.salt ^ hash(kvh * 0x9e3779b9u + j)));
    let u = (f32(h >> 8u) + 0.5) / 16777216.0;
    return -log(-log(u));
}

fn pooled(kvh: u32, j: u32) -> f32 {
    let base = kvh * p.capacity;
    var s = score[base + j];
    let lo = j - min(j, p.pool);
    let hi = min(p.n - 1u, j + p.pool);
    for (var i = lo; i <= hi; i++) {
        s = max(s, score[base + i]);
    }
    return s;
}

fn key(stage: u32, kvh: u32, j: u32) -> u32 {
    let s = pooled(kvh, j);
    if (stage == 0u) {
        return order_key(s);
    }
    return order_key(s + gumbel(kvh, j));
}

// Choose `need` more unmarked slots of head `kvh` by the stage's key.
fn choose(stage: u32, need: u32, kvh: u32, lid: u32) {
    let base = kvh * p.capacity;
    var lo = 0u;
    var hi = 0xffffffffu;
    for (var it = 0u; it < 32u; it++) {
        let mid = lo + (hi - lo) / 2u + ((hi - lo) & 1u);
        if (lid == 0u) {
            atomicStore(&counter, 0u);
        }
        workgroupBarrier();
        var c = 0u;
        for (var j = lid; j < p.n; j += WG) {
            if (mark[base + j] == 0u && key(stage, kvh, j) >= mid) {
                c++;
            }
        }
        atomicAdd(&counter, c);
        workgroupBarrier();
        let total = atomicLoad(&counter);
        workgroupBarrier();
        if (total >= need) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    // Every key above the threshold, then ties in slot order.
    if (lid == 0u) {
        atomicStore(&counter, 0u);
    }
    workgroupBarrier();
    var c = 0u;
    for (var j = lid; j < p.n; j += WG) {
        if (mark[base + j] == 0u && key(stage, kvh, j) > lo) {
            mark[base + j] = 2u;
            c++;
        }
    }
    atomicAdd(&counter, c);
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        var rest = need - min(need, atomicLoad(&counter));
        for (var j = 0u; j < p.n && rest > 0u; j++) {
            if (mark[base + j] == 0u && key(stage, kvh, j) == lo) {
                mark[base + j] = 2u;
                rest--;
            }
        }
    }
    storageBarrier();
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let kvh = wid.x;
    let lid = lid3.x;
    let base = kvh * p.capacity;
    for (var j = lid; j < p.n; j += WG) {
        mark[base + j] = select(0u, 1u, j < p.sinks || j + p.recent >= p.n);
    }
    storageBarrier();
    workgroupBarrier();
    if (p.n_score > 0u) {
        choose(0u, p.n_score, kvh, lid);
    }
    if (p.n_random > 0u) {
        choose(1u, p.n_random, kvh, lid);
    }
    // Ascending list of the marked slots: count per contiguous segment, scan, write.
    let per = (p.n + WG - 1u) / WG;
    let start = min(p.n, lid * per);
    let end = min(p.n, start + per);
    var c = 0u;
    for (var j = start; j < end; j++) {
        c += select(0u, 1u, mark[base + j] != 0u);
    }
    seg[lid] = c;
    workgroupBarrier();
    if (lid == 0u) {
        var acc = 0u;
        for (var i = 0u; i < WG; i++) {
            let v = seg[i];
            seg[i] = acc;
            acc += v;
        }
    }
    workgroupBarrier();
    var o = seg[lid];
    for (var j = start; j < end; j++) {
        if (mark[base + j] != 0u && o < p.keep) {
            kept[kvh * p.keep + o] = j;
            o++;
        }
    }
}
