// Fused dequantize-and-dot of one 32-weight unit with x[xb..xb+32], for the types that
// decode reads most (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K): no private array, four weights at a
// time as vec4 dot products, and each block's scale (and min) applied once to the sums
// instead of to every weight (Σ (d·q + m)·x = d·Σ q·x + m·Σ x). The matvec kernel calls
// `unit_dot`, which the host generates as a call to the function for the tensor's type
// (or, for other types, as `decode_unit` followed by a plain loop). Layouts as in
// dequant.wgsl; runtime/src/quant/blocks.rs is the reference.

// x[i..i+4] as a vec4.
fn x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}

// Bits `shift..shift+4` of each byte of q, as four floats.
fn nibbles(q: u32, shift: u32) -> vec4<f32> {
    let v = (q >> shift) & 0x0f0f0f0fu;
    return vec4<f32>(f32(v & 0xffu), f32((v >> 8u) & 0xffu), f32((v >> 16u) & 0xffu), f32(v >> 24u));
}

// The four bytes of q, sign-extended, as floats.
fn sbytes(q: u32) -> vec4<f32> {
    return vec4<f32>(sbyte(q, 0u), sbyte(q, 1u), sbyte(q, 2u), sbyte(q, 3u));
}

const ONES: vec4<f32> = vec4<f32>(1.0, 1.0, 1.0, 1.0);

// (Σ q·x, Σ x) over a legacy 4-bit block: its 16 bytes at `qs` hold weight l in the low
// nibble of byte l and weight 16 + l in the high one.
fn nibble_sums(qs: u32, xb: u32) -> vec2<f32> {
    var sq = 0.0;
    var sx = 0.0;
    for (var j = 0u; j < 4u; j++) {
        let q = ld_u32(qs + 4u * j);
        let xl = x4(xb + 4u * j);
        let xh = x4(xb + 16u + 4u * j);
        sq += dot(nibbles(q, 0u), xl) + dot(nibbles(q, 4u), xh);
        sx += dot(xl + xh, ONES);
    }
    return vec2<f32>(sq, sx);
}

// Q4_0 (18 bytes): d @0, qs[16] @2; weight = (nibble - 8)·d.
fn dot_unit_q4_0(rb: u32, u: u32, xb: u32) -> f32 {
    let b = rb + u * 18u;
    let s = nibble_sums(b + 2u, xb);
    return ld_f16(b) * (s.x - 8.0 * s.y);
}

// Q4_1 (20 bytes): d @0, m @2, qs[16] @4; weight = nibble·d + m.
fn dot_unit_q4_1(rb: u32, u: u32, xb: u32) -> f32 {
    let b = rb + u * 20u;
    let s = nibble_sums(b + 4u, xb);
    return ld_f16(b) * s.x + ld_f16(b + 2u) * s.y;
}

// Q8_0 (34 bytes): d @0, qs[32] (i8) @2; weight = q·d.
fn dot_unit_q8_0(rb: u32, u: u32, xb: u32) -> f32 {
    let b = rb + u * 34u;
    var s = 0.0;
    for (var j = 0u; j < 8u; j++) {
        s += dot(sbytes(ld_u32(b + 2u + 4u * j)), x4(xb + 4u * j));
    }
    return ld_f16(b) * s;
}

// Q4_K (144 bytes): unit s of a super-block is 32 nibbles of qs[32(s/2)..] (low for even
// s, high for odd) with scale/min s; weight = d·sc·q − dmin·m.
fn dot_unit_q4_k(rb: u32, u: u32, xb: u32) -> f32 {
    let b = rb + (u / 8u) * 144u;
    let s = u % 8u;
    let sm = k4_scale_min(b + 4u, s);
    let shift = 4u * (s & 1u);
    let qs = b + 16u + 32u * (s / 2u);
    var sq = 0.0;
    var sx = 0.0;
    for (var j = 0u; j < 8u; j++) {
        let xv = x4(xb + 4u * j);
        sq += dot(nibbles(ld_u32(qs + 4u * j), shift), xv);
        sx += dot(xv, ONES);
    }
    return ld_f16(b) * sm.x * sq - ld_f16(b + 2u) * sm.y * sx;
}

// Q6_K (210 bytes): unit s is quarter r = s % 4 of half n = s / 4; its weight i (0..32) is
// (low 4 bits of ql[64n + 32(r&1) + i] at 4(r>>1)) | (2 bits of qh[32n + i] at 2r) << 4,
// minus 32, times d·scale[8n + 2r + i/16].
fn dot_unit_q6_k(rb: u32, u: u32, xb: u32) -> f32 {
    let b = rb + (u / 8u) * 210u;
    let s = u % 8u;
    let n = s / 4u;
    let r = s % 4u;
    let ql = b + 64u * n + 32u * (r & 1u);
    let qh = b + 128u + 32u * n;
    let nshift = 4u * (r >> 1u);
    let hshift = 2u * r;
    var total = 0.0;
    for (var h = 0u; h < 2u; h++) {
        let sc = f32(bitcast<i32>(ld_u8(b + 192u + 8u * n + h + 2u * r) << 24u) >> 24u);
        var sq = 0.0;
        for (var t = 0u; t < 4u; t++) {
            let i = 16u * h + 4u * t;
            let lo = (ld_u32(ql + i) >> nshift) & 0x0f0f0f0fu;
            let hi = ((ld_u32(qh + i) >> hshift) & 0x03030303u) << 4u;
            let c = lo | hi;
            let code = vec4<f32>(f32(c & 0xffu), f32((c >> 8u) & 0xffu), f32((c >> 16u) & 0xffu), f32(c >> 24u));
            sq += dot(code - vec4<f32>(32.0), x4(xb + i));
        }
        total += sc * sq;
    }
    return ld_f16(b + 208u) * total;
}
