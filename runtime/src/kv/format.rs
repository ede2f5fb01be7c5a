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
//! As in ggml, q is computed with the f32 scale and the f16-rounded scale is stored;
//! decoding multiplies by the stored scale. `shaders/common/kv_format.wgsl` decodes the
//! same way.

use std::str::FromStr;

use half::f16;

/// Values per quantization block.
pub const KV_BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum KvType {
    #[default]
    F16,
    Q8,
    Q4,
}

impl KvType {
    pub const NAMES: &'static str = "f16, q8, q4";

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
            KvType::Q4 => "q4",
        }
    }

    /// The id the shaders switch on.
    pub fn shader_id(self) -> u32 {
        match self {
            KvType::F16 => 0,
            KvType::Q8 => 1,
            KvType::Q4 => 2,
        }
    }

    /// Whether a head dim can be stored in this type.
    pub fn supports(self, head_dim: usize) -> bool {
        match self {
            KvType::F16 => head_dim.is_multiple_of(2),
            KvType::Q8 | KvType::Q4 => head_dim.is_multiple_of(KV_BLOCK),
        }
    }

    /// Words of the quantized values of one row.
    pub fn data_words(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => head_dim / 2,
            KvType::Q8 => head_dim / 4,
            KvType::Q4 => head_dim / 8,
        }
    }

    /// Words of one row: values, then scales (two f16 per word).
    pub fn row_words(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => head_dim / 2,
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
            other => Err(format!(
                "unknown KV type '{other}': expected one of {}",
                Self::NAMES
            )),
        }
    }
}

/// Encode one row of `x` (head_dim values) into `out` (row_words words).
pub fn encode_row(ty: KvType, x: &[f32], out: &mut [u32]) {
    let hd = x.len();
    match ty {
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

/// Decode one row (row_words words) into `out` (head_dim values).
pub fn decode_row(ty: KvType, row: &[u32], out: &mut [f32]) {
    let hd = out.len();
    let dw = ty.data_words(hd);
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
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

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
        assert!("q5".parse::<KvType>().unwrap_err().contains("f16, q8, q4"));
    }
}
