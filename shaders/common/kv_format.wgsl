// KV cache rows in their storage type (runtime/src/kv/format.rs): f16 pairs, or blocks of
// 32 values as Q8_0 / Q4_0 codes followed by the blocks' f16 scales, two per word, or q4c
// rows: codes per channel, the (step, minimum) pairs of the channels of the row's block of
// 32 slots spread over the block's rows (the cache's capacity is whole blocks, so a row's
// block starts at its row index rounded down to 32).
// A template: the Rust side instantiates it per buffer, replacing KVNAME (k or v), KVBUF (the
// binding) and KVTY (the type constant: 0 f16, 1 q8, 2 q4, 3 q4c). `base` is a row's first
// word.

fn KVNAME_data_words(hd: u32) -> u32 {
    if (KVTY == 0u) {
        return hd / 2u;
    }
    return select(hd / 8u, hd / 4u, KVTY == 1u);
}

fn KVNAME_row_words(hd: u32) -> u32 {
    if (KVTY == 0u) {
        return hd / 2u;
    }
    if (KVTY == 3u) {
        return hd / 8u + hd / 32u;
    }
    return KVNAME_data_words(hd) + (hd / 32u + 1u) / 2u;
}

fn KVNAME_at(base: u32, d: u32, hd: u32) -> f32 {
    if (KVTY == 0u) {
        let v = unpack2x16float(KVBUF[base + d / 2u]);
        return select(v.x, v.y, (d & 1u) == 1u);
    }
    if (KVTY == 3u) {
        let rw = KVNAME_row_words(hd);
        let ri = base / rw;
        let per_row = hd / 32u;
        let dm = unpack2x16float(KVBUF[(ri - ri % 32u + d / per_row) * rw + hd / 8u + d % per_row]);
        let q = (KVBUF[base + d / 8u] >> (4u * (d % 8u))) & 0xfu;
        return dm.y + f32(q) * dm.x;
    }
    let blk = d / 32u;
    let sv = unpack2x16float(KVBUF[base + KVNAME_data_words(hd) + blk / 2u]);
    let s = select(sv.x, sv.y, (blk & 1u) == 1u);
    if (KVTY == 1u) {
        let b = (KVBUF[base + d / 4u] >> (8u * (d % 4u))) & 0xffu;
        return f32(bitcast<i32>(b << 24u) >> 24u) * s;
    }
    let n = (KVBUF[base + d / 8u] >> (4u * (d % 8u))) & 0xfu;
    return (f32(n) - 8.0) * s;
}
