// Byte access into the weight binding `w` (declared by the kernel as array<u32>).
// GGUF blocks are not 4-byte aligned (Q4_0 is 18 bytes), so every field is read by byte
// offset: little-endian, as in the file.

fn ld_u8(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
}

fn ld_u16(b: u32) -> u32 {
    if ((b & 3u) == 3u) {
        return ld_u8(b) | (ld_u8(b + 1u) << 8u);
    }
    return (w[b >> 2u] >> ((b & 3u) * 8u)) & 0xffffu;
}

fn ld_u32(b: u32) -> u32 {
    let s = (b & 3u) * 8u;
    let lo = w[b >> 2u];
    if (s == 0u) {
        return lo;
    }
    return (lo >> s) | (w[(b >> 2u) + 1u] << (32u - s));
}

fn ld_f16(b: u32) -> f32 {
    return unpack2x16float(ld_u16(b)).x;
}

// Sign-extend byte i (0..3) of a word.
fn sbyte(v: u32, i: u32) -> f32 {
    return f32(bitcast<i32>(v << (24u - 8u * i)) >> 24u);
}
