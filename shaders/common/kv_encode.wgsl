// Encode one KV row from f32 values (a template like kv_format.wgsl, plus KVSRC: the f32
// source binding; q4c rows are left to kv_q4c.wgsl). Q8_0: d = max|x|/127, q = round half
// away from zero of x/d; Q4_0:
// d = m/-8 for the value m of largest magnitude, q = min(15, floor(x/d + 8.5)); the
// scale is stored as f16, as ggml does.

fn KVNAME_store(base: u32, src: u32, hd: u32) {
    if (KVTY == 3u) {
        // q4c rows are written a block at a time (kv_q4c.wgsl).
        return;
    }
    if (KVTY == 0u) {
        for (var i = 0u; i < hd / 2u; i++) {
            KVBUF[base + i] = pack2x16float(vec2<f32>(KVSRC[src + 2u * i], KVSRC[src + 2u * i + 1u]));
        }
        return;
    }
    let dw = KVNAME_data_words(hd);
    for (var w = dw; w < KVNAME_row_words(hd); w++) {
        KVBUF[base + w] = 0u;
    }
    for (var blk = 0u; blk < hd / 32u; blk++) {
        let b0 = src + blk * 32u;
        var amax = 0.0;
        var m = 0.0;
        for (var i = 0u; i < 32u; i++) {
            let v = KVSRC[b0 + i];
            if (abs(v) > amax) {
                amax = abs(v);
                m = v;
            }
        }
        let d = select(m / -8.0, amax / 127.0, KVTY == 1u);
        let id = select(0.0, 1.0 / d, d != 0.0);
        if (KVTY == 1u) {
            for (var w = 0u; w < 8u; w++) {
                var word = 0u;
                for (var e = 0u; e < 4u; e++) {
                    let x = KVSRC[b0 + 4u * w + e] * id;
                    let q = i32(sign(x) * floor(abs(x) + 0.5));
                    word |= (bitcast<u32>(q) & 0xffu) << (8u * e);
                }
                KVBUF[base + blk * 8u + w] = word;
            }
        } else {
            for (var w = 0u; w < 4u; w++) {
                var word = 0u;
                for (var e = 0u; e < 8u; e++) {
                    let x = KVSRC[b0 + 8u * w + e] * id;
                    word |= u32(clamp(i32(floor(x + 8.5)), 0, 15)) << (4u * e);
                }
                KVBUF[base + blk * 4u + w] = word;
            }
        }
        let sb = pack2x16float(vec2<f32>(d, 0.0)) & 0xffffu;
        KVBUF[base + dw + blk / 2u] |= sb << (16u * (blk & 1u));
    }
}
