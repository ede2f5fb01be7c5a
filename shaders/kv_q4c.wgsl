// Write q4c blocks (runtime/src/kv/format.rs): 4-bit codes per channel over blocks of 32
// slots, with an f16 (step, minimum) pair per channel and block; row r of a block holds
// its codes (width/8 words) and the pairs of channels r*width/32 .. (r+1)*width/32.
//
// mode 0 (store): rows of x ([n][n_kv_heads][width] f32) go to slots slot0.. of each head;
// mode 1 (compact): slot kept[h][i] of the source cache (src_capacity slots per head) goes
// to slot i. Either way each value is first written to the pending values of its block
// ([n_kv_heads][32][width] f32), and a block is encoded from them when it is full or the
// last value has arrived, so a block still filling reads as the quantization of the
// slots it has. One thread per (KV head, 8 channels): it owns those channels' code
// nibbles (one word per row) and their (step, minimum) words, and walks the slots in
// order.

struct Params {
    width: u32,
    n_kv_heads: u32,
    n: u32,
    capacity: u32,
    slot0: u32,
    src_capacity: u32,
    mode: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> kept: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> pending: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const SLOTS: u32 = 32u;

fn row_words() -> u32 {
    return p.width / 8u + p.width / SLOTS;
}

// The word of channel c's (step, minimum) in the block whose first row is `first`.
fn param_word(first: u32, c: u32) -> u32 {
    let per_row = p.width / SLOTS;
    return (first + c / per_row) * row_words() + p.width / 8u + c % per_row;
}

// Channel c of row `ri` (a row index: head * capacity + slot) of the source cache.
fn src_at(ri: u32, c: u32) -> f32 {
    let first = ri - ri % SLOTS;
    let dm = unpack2x16float(src[param_word(first, c)]);
    let q = (src[ri * row_words() + c / 8u] >> (4u * (c % 8u))) & 0xfu;
    return dm.y + f32(q) * dm.x;
}

fn value(h: u32, i: u32, c: u32) -> f32 {
    if (p.mode == 0u) {
        return x[(i * p.n_kv_heads + h) * p.width + c];
    }
    return src_at(h * p.src_capacity + kept[h * p.n + i], c);
}

// Encode rows 0..rows of the block of head h starting at slot b0, channels 8w..8w+8.
fn encode(h: u32, w: u32, rows: u32, b0: u32) {
    let first = h * p.capacity + b0;
    let pend = h * SLOTS * p.width;
    var step: array<f32, 8>;
    var lo: array<f32, 8>;
    for (var e = 0u; e < 8u; e++) {
        let c = 8u * w + e;
        var mn = pending[pend + c];
        var mx = mn;
        for (var r = 1u; r < rows; r++) {
            let v = pending[pend + r * p.width + c];
            mn = min(mn, v);
            mx = max(mx, v);
        }
        let packed = pack2x16float(vec2<f32>((mx - mn) / 15.0, mn));
        cache[param_word(first, c)] = packed;
        let dm = unpack2x16float(packed);
        step[e] = dm.x;
        lo[e] = dm.y;
    }
    for (var r = 0u; r < rows; r++) {
        var word = 0u;
        for (var e = 0u; e < 8u; e++) {
            let v = pending[pend + r * p.width + 8u * w + e];
            let id = select(0.0, 1.0 / step[e], step[e] != 0.0);
            let q = clamp(i32(floor((v - lo[e]) * id + 0.5)), 0, 15);
            word |= u32(q) << (4u * e);
        }
        cache[(first + r) * row_words() + w] = word;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let groups = p.width / 8u;
    if (gid.x >= p.n_kv_heads * groups) {
        return;
    }
    let h = gid.x / groups;
    let w = gid.x % groups;
    let pend = h * SLOTS * p.width;
    for (var i = 0u; i < p.n; i++) {
        let s = p.slot0 + i;
        let r = s % SLOTS;
        for (var e = 0u; e < 8u; e++) {
            let c = 8u * w + e;
            pending[pend + r * p.width + c] = value(h, i, c);
        }
        if (r == SLOTS - 1u || i + 1u == p.n) {
            encode(h, w, r + 1u, s - r);
        }
    }
}
