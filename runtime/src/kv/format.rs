//! Storage types of the KV cache, one row (one token of one KV head, `head_dim` values)
//! at a time, in u32 words so that every kernel indexes rows the same way:
//!
//! - `f16`: head_dim/2 words, two f16 per word.
//! - `q8`: blocks of 32 values quantized as llama.cpp's Q8_0 (d = max|x|/127, q =
//!   round(x/d) in i8): head_dim/4 words of four i8, then the block scales as f16, two per
//!   word.
//! - `q4`: blocks of 32 as llama.cpp's Q4_0 (d = m/-8 with m the value of largest
//!   magnitude, q = clamp(round(x/d) + 8, 0, 15)): head_dim/8 words of eight nibbles, then
//!   the f16 scales.
//!
//! - `q4c`: 4 bits per value with a scale and a minimum per *channel* over blocks of 32
//!   consecutive slots (KIVI, Liu et al., arXiv 2402.02750: keys carry per-channel
//!   offsets and outliers that a per-token block cannot hold; quantizing each channel
//!   across tokens keeps them). q = round((x - min)/d), d = (max - min)/15 over the
//!   block's slots, both stored as f16 and used rounded. A row holds its token's codes
//!   (head_dim/8 words of eight nibbles) and a share of its block's parameters:
//!   head_dim/32 words, so that the 32 rows of a block hold the head_dim (d, min) pairs,
//!   channel c in row c / (head_dim/32) of the block. 5 bits per value. A block is
//!   re-encoded whole each time a slot of it is written (from the values kept for the
//!   block that is still filling, `kernels::kv_store`), so a partly filled block reads as
//!   a valid block quantized over the slots it has; caches of this type have capacities
//!   that are multiples of 32, so a row's block starts at its row index rounded down.
//!
//! As in ggml, q is computed with the f32 scale and the f16-rounded scale is stored;
//! decoding multiplies by the stored scale. `shaders/common/kv_format.wgsl` decodes the
//! same way.

use std::str::FromStr;

use half::f16;

/// Values per quantization block.
pub const KV_BLOCK: usize = 32;

/// Slots per block of the per-channel type (`q4c`).
pub const Q4C_SLOTS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum KvType {
    #[default]
    F16,
    Q8,
    Q4,
    /// 4-bit per channel over blocks of 32 slots (KIVI).
    Q4C,
}

impl KvType {
    pub const NAMES: &'static str = "f16, q8, q4, q4c";

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
            KvType::Q4 => "q4",
            KvType::Q4C => "q4c",
        }
    }

    /// The id the shaders switch on.
    pub fn shader_id(self) -> u32 {
        match self {
            KvType::F16 => 0,
            KvType::Q8 => 1,
            KvType::Q4 => 2,
            KvType::Q4C => 3,
        }
    }

    /// Whether a head dim can be stored in this type.
    pub fn supports(self, head_dim: usize) -> bool {
        match self {
            KvType::F16 => head_dim.is_multiple_of(2),
            KvType::Q8 | KvType::Q4 | KvType::Q4C => head_dim.is_multiple_of(KV_BLOCK),
        }
    }

    /// Whether rows are quantized together in blocks of slots (`q4c`): the cache's
    /// capacity must then be a multiple of [`Q4C_SLOTS`], and rows move between slots
    /// only by decoding and re-encoding their blocks.
    pub fn blocks_slots(self) -> bool {
        self == KvType::Q4C
    }

    /// Words of the quantized values of one row.
    pub fn data_words(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => head_dim / 2,
            KvType::Q8 => head_dim / 4,
            KvType::Q4 | KvType::Q4C => head_dim / 8,
        }
    }

    /// Words of one row: values, then scales (two f16 per word).
    pub fn row_words(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => head_dim / 2,
            KvType::Q4C => self.data_words(head_dim) + head_dim / Q4C_SLOTS,
            _ => self.data_words(head_dim) + (head_dim / KV_BLOCK).div_ceil(2),
        }
    }
}

impl FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" => Ok(KvType::F16),
            "q8" | "q8_0" => Ok(KvType::Q8),
            "q4" | "q4_0" => Ok(KvType::Q4),
            "q4c" => Ok(KvType::Q4C),
            other => Err(format!(
                "unknown KV type '{other}': expected one of {}",
                Self::NAMES
            )),
        }
    }
}

/// Encode one row of `x` (head_dim values) into `out` (row_words words). Not for `q4c`,
/// whose rows are written a block at a time ([`encode_block_q4c`]).
pub fn encode_row(ty: KvType, x: &[f32], out: &mut [u32]) {
    let hd = x.len();
    match ty {
        KvType::Q4C => unreachable!("q4c rows are encoded by block (encode_block_q4c)"),
        KvType::F16 => {
            for (i, w) in out.iter_mut().enumerate().take(hd / 2) {
                let lo = f16::from_f32(x[2 * i]).to_bits() as u32;
                let hi = f16::from_f32(x[2 * i + 1]).to_bits() as u32;
                *w = lo | (hi << 16);
            }
        }
        KvType::Q8 | KvType::Q4 => {
            let dw = ty.data_words(hd);
            out[..ty.row_words(hd)].fill(0);
            for (b, blk) in x.chunks(KV_BLOCK).enumerate() {
                let d = if ty == KvType::Q8 {
                    blk.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0
                } else {
                    let m = blk
                        .iter()
                        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    m / -8.0
                };
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (i, &v) in blk.iter().enumerate() {
                    let j = b * KV_BLOCK + i;
                    if ty == KvType::Q8 {
                        let q = (v * id).round() as i32 as u32 & 0xff;
                        out[j / 4] |= q << (8 * (j % 4));
                    } else {
                        let q = ((v * id + 8.5) as i32).clamp(0, 15) as u32;
                        out[j / 8] |= q << (4 * (j % 8));
                    }
                }
                let bits = f16::from_f32(d).to_bits() as u32;
                out[dw + b / 2] |= bits << (16 * (b % 2));
            }
        }
    }
}

/// The (d, min) of channel `c` of a q4c block: the word's place within the block's rows.
fn q4c_param_at(hd: usize, c: usize) -> usize {
    let per_row = hd / Q4C_SLOTS;
    (c / per_row) * KvType::Q4C.row_words(hd) + hd / 8 + c % per_row
}

/// Encode rows `0..n` (`n` ≤ 32) of one q4c block from `x` ([n][head_dim]) into `rows`
/// (the block's 32 rows): per channel, the minimum and the step (max - min)/15 over the
/// `n` rows, rounded to f16, and each value's code round((x - min)/d) in 0..=15. The
/// parameter words of rows past `n` are written too (they belong to the block); their
/// codes are left as they are.
pub fn encode_block_q4c(x: &[f32], n: usize, hd: usize, rows: &mut [u32]) {
    let rw = KvType::Q4C.row_words(hd);
    debug_assert!(n <= Q4C_SLOTS && x.len() >= n * hd && rows.len() >= Q4C_SLOTS * rw);
    for r in 0..n {
        rows[r * rw..r * rw + hd / 8].fill(0);
    }
    for c in 0..hd {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for r in 0..n {
            lo = lo.min(x[r * hd + c]);
            hi = hi.max(x[r * hd + c]);
        }
        if n == 0 {
            (lo, hi) = (0.0, 0.0);
        }
        let d16 = f16::from_f32((hi - lo) / 15.0);
        let m16 = f16::from_f32(lo);
        let (d, m) = (d16.to_f32(), m16.to_f32());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for r in 0..n {
            let q = (((x[r * hd + c] - m) * id + 0.5) as i32).clamp(0, 15) as u32;
            rows[r * rw + c / 8] |= q << (4 * (c % 8));
        }
        rows[q4c_param_at(hd, c)] = d16.to_bits() as u32 | ((m16.to_bits() as u32) << 16);
    }
}

/// Decode row `r` of a q4c block (`rows`: the block's 32 rows) into `out` (head_dim).
pub fn decode_block_row_q4c(rows: &[u32], r: usize, out: &mut [f32]) {
    let hd = out.len();
    let rw = KvType::Q4C.row_words(hd);
    for (c, o) in out.iter_mut().enumerate() {
        let p = rows[q4c_param_at(hd, c)];
        let d = f16::from_bits(p as u16).to_f32();
        let m = f16::from_bits((p >> 16) as u16).to_f32();
        let q = (rows[r * rw + c / 8] >> (4 * (c % 8))) & 0xf;
        *o = m + q as f32 * d;
    }
}

/// Decode slot `slot` of one head of a q4c cache (`region`: the head's rows from slot 0)
/// into `out` (head_dim values).
pub fn decode_slot_q4c(region: &[u32], hd: usize, slot: usize, out: &mut [f32]) {
    let rw = KvType::Q4C.row_words(hd);
    let b0 = (slot - slot % Q4C_SLOTS) * rw;
    decode_block_row_q4c(&region[b0..b0 + Q4C_SLOTS * rw], slot % Q4C_SLOTS, out);
}

/// Decode one row (row_words words) into `out` (head_dim values). Not for `q4c`, whose
/// rows need their block ([`decode_block_row_q4c`]).
pub fn decode_row(ty: KvType, row: &[u32], out: &mut [f32]) {
    let hd = out.len();
    // f16 words hold value 2i in their low half, which on a little-endian CPU is the
    // first f16 in memory: the row is a plain f16 slice, converted by `half` (F16C/NEON
    // where the CPU has them).
    #[cfg(target_endian = "little")]
    if ty == KvType::F16 && hd.is_multiple_of(2) && row.len() >= hd / 2 {
        use half::slice::HalfFloatSliceExt;
        let halves: &[f16] = bytemuck::cast_slice(&row[..hd / 2]);
        halves.convert_to_f32_slice(out);
        return;
    }
    let dw = ty.data_words(hd);
    let scale = |b: usize| f16::from_bits((row[dw + b / 2] >> (16 * (b % 2))) as u16).to_f32();
    // q8/q4: byte i of the data words holds value i (q8) or values 2i and 2i + 1 in its
    // low and high nibble (q4) on a little-endian CPU; one scale per block of 32.
    #[cfg(target_endian = "little")]
    if matches!(ty, KvType::Q8 | KvType::Q4) && hd.is_multiple_of(KV_BLOCK) && row.len() >= dw {
        let bytes: &[u8] = bytemuck::cast_slice(&row[..dw]);
        let per_block = if ty == KvType::Q8 {
            KV_BLOCK
        } else {
            KV_BLOCK / 2
        };
        for (b, (o, q)) in out
            .chunks_exact_mut(KV_BLOCK)
            .zip(bytes.chunks_exact(per_block))
            .enumerate()
        {
            let d = scale(b);
            if ty == KvType::Q8 {
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = q as i8 as f32 * d;
                }
            } else {
                for (o, &q) in o.chunks_exact_mut(2).zip(q) {
                    o[0] = ((q & 0xF) as i32 - 8) as f32 * d;
                    o[1] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        return;
    }
    decode_row_by_value(ty, row, out);
}

/// `decode_row` one value at a time from its word: the definition the fast paths above
/// are held to (and the path for big-endian CPUs).
fn decode_row_by_value(ty: KvType, row: &[u32], out: &mut [f32]) {
    let dw = ty.data_words(out.len());
    let scale = |b: usize| f16::from_bits((row[dw + b / 2] >> (16 * (b % 2))) as u16).to_f32();
    for (j, o) in out.iter_mut().enumerate() {
        *o = match ty {
            KvType::F16 => f16::from_bits((row[j / 2] >> (16 * (j % 2))) as u16).to_f32(),
            KvType::Q8 => {
                let q = ((row[j / 4] >> (8 * (j % 4))) & 0xff) as u8 as i8;
                q as f32 * scale(j / KV_BLOCK)
            }
            KvType::Q4 => {
                let q = ((row[j / 8] >> (4 * (j % 8))) & 0xf) as i32 - 8;
                q as f32 * scale(j / KV_BLOCK)
            }
            KvType::Q4C => unreachable!("q4c rows are decoded by block (decode_block_row_q4c)"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The slice fast paths of `decode_row` give exactly the per-value definition.
    #[test]
    fn fast_row_decoding_equals_the_definition() {
        let mut rng = SplitMix64::new(11);
        for ty in [KvType::F16, KvType::Q8, KvType::Q4] {
            for hd in [32, 64, 96, 128] {
                let x = rng.vec_f32(hd, -3.0, 3.0);
                let mut w = vec![0u32; ty.row_words(hd)];
                encode_row(ty, &x, &mut w);
                let (mut fast, mut slow) = (vec![0.0f32; hd], vec![0.0f32; hd]);
                decode_row(ty, &w, &mut fast);
                decode_row_by_value(ty, &w, &mut slow);
                assert_eq!(fast, slow, "{ty:?} hd {hd}");
            }
        }
    }

    #[test]
    fn rows_round_trip_within_the_type_error() {
        let mut rng = SplitMix64::new(5);
        for (ty, bound) in [
            (KvType::F16, 1e-3),
            (KvType::Q8, 1.0 / 127.0),
            (KvType::Q4, 1.0 / 7.0),
        ] {
            for hd in [64, 128, 96] {
                let x = rng.vec_f32(hd, -3.0, 3.0);
                let mut w = vec![0u32; ty.row_words(hd)];
                encode_row(ty, &x, &mut w);
                let mut y = vec![0.0; hd];
                decode_row(ty, &w, &mut y);
                for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                    let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for (a, c) in xb.iter().zip(yb) {
                        assert!(
                            (a - c).abs() <= bound * amax * 1.01,
                            "{ty:?} hd {hd} block {b}: {a} -> {c}"
                        );
                    }
                }
            }
        }
        assert_eq!(
            KvType::Q8.row_words(64),
            17,
            "68 bytes per 64 values, as Q8_0"
        );
        assert_eq!(
            KvType::Q4.row_words(64),
            9,
            "36 bytes per 64 values, as Q4_0"
        );
        assert!(!KvType::Q8.supports(80) && KvType::F16.supports(80));
        assert!("q5"
            .parse::<KvType>()
            .unwrap_err()
            .contains("f16, q8, q4, q4c"));
    }

    /// A q4c block of any fill decodes each value within half a step of its channel
    /// ((max - min)/15 over the block's filled rows), plus the f16 rounding of the
    /// channel's minimum and step; rows per head dim and the name as documented.
    #[test]
    fn q4c_blocks_round_trip_within_half_a_channel_step() {
        let mut rng = SplitMix64::new(11);
        for hd in [32, 64, 128] {
            let rw = KvType::Q4C.row_words(hd);
            assert_eq!(
                rw,
                hd / 8 + hd / 32,
                "4 bits per value plus a share of the block's (d, min)"
            );
            for n in [1, 2, 7, 31, 32] {
                // Channels with offsets and spreads of their own, as keys have.
                let off = rng.vec_f32(hd, -20.0, 20.0);
                let spread = rng.vec_f32(hd, 0.0, 4.0);
                let mut x = rng.vec_f32(n * hd, -1.0, 1.0);
                for (i, v) in x.iter_mut().enumerate() {
                    *v = off[i % hd] + spread[i % hd] * *v;
                }
                let mut rows = vec![0xdead_beef_u32; Q4C_SLOTS * rw];
                encode_block_q4c(&x, n, hd, &mut rows);
                let mut y = vec![0.0f32; hd];
                for r in 0..n {
                    decode_block_row_q4c(&rows, r, &mut y);
                    for c in 0..hd {
                        let col = (0..n).map(|t| x[t * hd + c]);
                        let lo = col.clone().fold(f32::INFINITY, f32::min);
                        let hi = col.fold(f32::NEG_INFINITY, f32::max);
                        let bound = (hi - lo) / 30.0 * 1.01 + lo.abs() * 1e-3 + 1e-6;
                        let err = (x[r * hd + c] - y[c]).abs();
                        assert!(
                            err <= bound,
                            "hd {hd} n {n} row {r} ch {c}: err {err} > {bound}"
                        );
                    }
                }
                // The same rows through the slot view of a head region.
                decode_slot_q4c(&rows, hd, n - 1, &mut y);
                let mut z = vec![0.0f32; hd];
                decode_block_row_q4c(&rows, n - 1, &mut z);
                assert_eq!(y, z);
            }
        }
        assert_eq!("q4c".parse::<KvType>().unwrap(), KvType::Q4C);
        assert!(KvType::Q4C.blocks_slots() && !KvType::Q4.blocks_slots());
        assert!(KvType::Q4C.supports(64) && !KvType::Q4C.supports(48));
    }
}
