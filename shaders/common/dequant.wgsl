// Dequantizers of every compute type, one function per type. Each fills the private array
// `dq` with the 32 weights of unit `u` of a row that starts at byte `rb`: a unit is 32
// consecutive weights (one legacy block, an eighth of a k-quant super-block, or 32 plain
// floats, zero-filled past `ncols`). The kernel calls `decode_unit`, which the host
// generates as a call to the function for the tensor's type.
// Formulas follow ggml's dequantize_row_* (runtime/src/quant/blocks.rs is the reference).

var<private> dq: array<f32, 32>;

fn decode_unit_f32(rb: u32, u: u32, ncols: u32) {
    for (var i = 0u; i < 32u; i++) {
        let e = u * 32u + i;
        dq[i] = select(0.0, bitcast<f32>(ld_u32(rb + 4u * e)), e < ncols);
    }
}

fn decode_unit_f16(rb: u32, u: u32, ncols: u32) {
    for (var i = 0u; i < 32u; i++) {
        let e = u * 32u + i;
        dq[i] = select(0.0, ld_f16(rb + 2u * e), e < ncols);
    }
}

fn decode_unit_bf16(rb: u32, u: u32, ncols: u32) {
    for (var i = 0u; i < 32u; i++) {
        let e = u * 32u + i;
        dq[i] = select(0.0, bitcast<f32>(ld_u16(rb + 2u * e) << 16u), e < ncols);
    }
}

fn decode_unit_q4_0(rb: u32, u: u32, ncols: u32) {
    let b = rb + u * 18u;
    let d = ld_f16(b);
    for (var j = 0u; j < 4u; j++) {
        let q = ld_u32(b + 2u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let byte = (q >> (8u * k)) & 0xffu;
            dq[4u * j + k] = (f32(byte & 0xfu) - 8.0) * d;
            dq[16u + 4u * j + k] = (f32(byte >> 4u) - 8.0) * d;
        }
    }
}

fn decode_unit_q4_1(rb: u32, u: u32, ncols: u32) {
    let b = rb + u * 20u;
    let d = ld_f16(b);
    let m = ld_f16(b + 2u);
    for (var j = 0u; j < 4u; j++) {
        let q = ld_u32(b + 4u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let byte = (q >> (8u * k)) & 0xffu;
            dq[4u * j + k] = f32(byte & 0xfu) * d + m;
            dq[16u + 4u * j + k] = f32(byte >> 4u) * d + m;
        }
    }
}

fn decode_unit_q5_0(rb: u32, u: u32, ncols: u32) {
    let b = rb + u * 22u;
    let d = ld_f16(b);
    let qh = ld_u32(b + 2u);
    for (var j = 0u; j < 4u; j++) {
        let q = ld_u32(b + 6u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let l = 4u * j + k;
            let byte = (q >> (8u * k)) & 0xffu;
            let h0 = ((qh >> l) & 1u) << 4u;
            let h1 = ((qh >> (l + 16u)) & 1u) << 4u;
            dq[l] = (f32((byte & 0xfu) | h0) - 16.0) * d;
            dq[16u + l] = (f32((byte >> 4u) | h1) - 16.0) * d;
        }
    }
}

fn decode_unit_q5_1(rb: u32, u: u32, ncols: u32) {
    let b = rb + u * 24u;
    let d = ld_f16(b);
    let m = ld_f16(b + 2u);
    let qh = ld_u32(b + 4u);
    for (var j = 0u; j < 4u; j++) {
        let q = ld_u32(b + 8u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let l = 4u * j + k;
            let byte = (q >> (8u * k)) & 0xffu;
            let h0 = ((qh >> l) & 1u) << 4u;
            let h1 = ((qh >> (l + 16u)) & 1u) << 4u;
            dq[l] = f32((byte & 0xfu) | h0) * d + m;
            dq[16u + l] = f32((byte >> 4u) | h1) * d + m;
        }
    }
}

fn decode_unit_q8_0(rb: u32, u: u32, ncols: u32) {
    let b = rb + u * 34u;
    let d = ld_f16(b);
    for (var j = 0u; j < 8u; j++) {
        let q = ld_u32(b + 2u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            dq[4u * j + k] = sbyte(q, k) * d;
        }
    }
}

// Q2_K (84 bytes): scales[16] @0, qs[64] @16, d @80, dmin @82. Unit s covers
// elements 32s..32s+32: half n = s/4 of the qs, bit pair j = s%4, scales 8n+2j and +1.
fn decode_unit_q2_k(rb: u32, u: u32, ncols: u32) {
    let b = rb + (u / 8u) * 84u;
    let s = u % 8u;
    let n = s / 4u;
    let j = s % 4u;
    let d = ld_f16(b + 80u);
    let dmin = ld_f16(b + 82u);
    for (var h = 0u; h < 2u; h++) {
        let sc = ld_u8(b + 8u * n + 2u * j + h);
        let dl = d * f32(sc & 0xfu);
        let ml = dmin * f32(sc >> 4u);
        for (var l = 0u; l < 16u; l++) {
            let q = (ld_u8(b + 16u + 32u * n + 16u * h + l) >> (2u * j)) & 3u;
            dq[16u * h + l] = dl * f32(q) - ml;
        }
    }
}

// Q3_K (110 bytes): hmask[32] @0, qs[64] @32, scales[12] @96, d @108.
fn q3k_scale(b: u32, i: u32) -> f32 {
    var low: u32;
    if (i < 8u) {
        low = ld_u8(b + 96u + i) & 0xfu;
    } else {
        low = ld_u8(b + 96u + i - 8u) >> 4u;
    }
    let high = (ld_u8(b + 104u + (i % 4u)) >> (2u * (i / 4u))) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

fn decode_unit_q3_k(rb: u32, u: u32, ncols: u32) {
    let b = rb + (u / 8u) * 110u;
    let s = u % 8u;
    let n = s / 4u;
    let j = s % 4u;
    let d = ld_f16(b + 108u);
    let m = 1u << (4u * n + j);
    for (var h = 0u; h < 2u; h++) {
        let dl = d * q3k_scale(b, 8u * n + 2u * j + h);
        for (var l = 0u; l < 16u; l++) {
            let i = 16u * h + l;
            let q = i32((ld_u8(b + 32u + 32u * n + i) >> (2u * j)) & 3u);
            let sub = select(4, 0, (ld_u8(b + i) & m) != 0u);
            dq[i] = dl * f32(q - sub);
        }
    }
}

// 6-bit scale and min j (0..8) of Q4_K/Q5_K, packed in 12 bytes at `sb`.
fn k4_scale_min(sb: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(ld_u8(sb + j) & 63u), f32(ld_u8(sb + j + 4u) & 63u));
    }
    let sc = (ld_u8(sb + j + 4u) & 0xfu) | ((ld_u8(sb + j - 4u) >> 6u) << 4u);
    let mn = (ld_u8(sb + j + 4u) >> 4u) | ((ld_u8(sb + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

// Q4_K (144 bytes): d @0, dmin @2, scales[12] @4, qs[128] @16. Unit s: 32 weights from
// qs[32(s/2)..], low nibbles for even s, high for odd, scale/min s.
fn decode_unit_q4_k(rb: u32, u: u32, ncols: u32) {
    let b = rb + (u / 8u) * 144u;
    let s = u % 8u;
    let d = ld_f16(b);
    let dmin = ld_f16(b + 2u);
    let sm = k4_scale_min(b + 4u, s);
    let d1 = d * sm.x;
    let m1 = dmin * sm.y;
    let shift = 4u * (s & 1u);
    for (var j = 0u; j < 8u; j++) {
        let q = ld_u32(b + 16u + 32u * (s / 2u) + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            dq[4u * j + k] = d1 * f32((q >> (8u * k + shift)) & 0xfu) - m1;
        }
    }
}

// Q5_K (176 bytes): d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48.
fn decode_unit_q5_k(rb: u32, u: u32, ncols: u32) {
    let b = rb + (u / 8u) * 176u;
    let s = u % 8u;
    let d = ld_f16(b);
    let dmin = ld_f16(b + 2u);
    let sm = k4_scale_min(b + 4u, s);
    let d1 = d * sm.x;
    let m1 = dmin * sm.y;
    let shift = 4u * (s & 1u);
    for (var j = 0u; j < 8u; j++) {
        let q = ld_u32(b + 48u + 32u * (s / 2u) + 4u * j);
        let h = ld_u32(b + 16u + 4u * j);
        for (var k = 0u; k < 4u; k++) {
            let lo = (q >> (8u * k + shift)) & 0xfu;
            let hi = ((h >> (8u * k + s)) & 1u) << 4u;
            dq[4u * j + k] = d1 * f32(lo | hi) - m1;
        }
    }
}

// Q6_K (210 bytes): ql[128] @0, qh[64] @128, scales[16] (i8) @192, d @208. Unit s: half
// n = s/4, quarter r = s%4 of that half's 128 weights.
fn decode_unit_q6_k(rb: u32, u: u32, ncols: u32) {
    let b = rb + (u / 8u) * 210u;
    let s = u % 8u;
    let n = s / 4u;
    let r = s % 4u;
    let d = ld_f16(b + 208u);
    let ql = b + 64u * n + 32u * (r & 1u);
    let qh = b + 128u + 32u * n;
    let nshift = 4u * (r >> 1u);
    let hshift = 2u * r;
    for (var h = 0u; h < 2u; h++) {
        let sc = f32(bitcast<i32>(ld_u8(b + 192u + 8u * n + h + 2u * r) << 24u) >> 24u);
        let dl = d * sc;
        for (var l = 0u; l < 16u; l++) {
            let i = 16u * h + l;
            let lo = (ld_u8(ql + i) >> nshift) & 0xfu;
            let hi = ((ld_u8(qh + i) >> hshift) & 3u) << 4u;
            dq[i] = dl * f32(i32(lo | hi) - 32);
        }
    }
}
