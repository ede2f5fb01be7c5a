//! Fused dequantize-and-dot of quantized rows with an f32 vector, the CPU device's decode
//! path (a matrix-vector product reads every weight once per token, so writing the
//! dequantized row out and reading it back, as the prefill path does, costs more than the
//! arithmetic). Each block's codes are multiplied with the activations in f32 lanes that the
//! compiler vectorizes; the block scales are applied once per block, and the per-block
//! offsets (Q4_0's 8, Q4_1's and Q4_K's mins) through precomputed sums of the activations
//! over each 32 values ([`DotInput`]), as llama.cpp's vec_dot functions do with its q8
//! activations. Types without a fused form return `None` and the caller dequantizes.
//! Held against `dequantize` + an f64 dot by the tests below.

use half::f16;

use super::blocks::k4_scale_min;
use super::{GgmlType, QK_K};

/// An activation vector and its sums over each 32 values.
pub struct DotInput<'a> {
    pub x: &'a [f32],
    sums: Vec<f32>,
}

impl<'a> DotInput<'a> {
    pub fn new(x: &'a [f32]) -> Self {
        Self {
            x,
            sums: x.chunks(32).map(|c| c.iter().sum()).collect(),
        }
    }
}

/// Whether [`dot_row`] has a fused form for `ty`.
pub fn fused(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q6_K
    )
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        *AVX2.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `a · b` in f32 over 16 independent lanes (a single running sum would serialize on the
/// add latency), compiled for AVX2 and FMA where the CPU has them.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `has_avx2` checked the CPU for AVX2, FMA and F16C.
        return unsafe { dot_f32_avx2(a, b) };
    }
    dot_f32_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_portable(a, b)
}

#[inline(always)]
fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The f16 at byte `at` as f32: normal numbers by shifting the bits (no call, no branch on
/// the hot path); zero, subnormals, infinities and NaN through `half`.
#[inline(always)]
fn h(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]) as u32;
    let exp = (bits >> 10) & 0x1F;
    if exp == 0 || exp == 31 {
        return f16::from_bits(bits as u16).to_f32();
    }
    f32::from_bits(((bits & 0x8000) << 16) | ((exp + 112) << 23) | ((bits & 0x3FF) << 13))
}

/// The dot product of one row (`row`: its raw blocks, `input.x.len()` elements) with
/// `input.x`; None when `ty` has no fused form (see [`fused`]). On x86-64 CPUs with AVX2
/// and FMA the same code runs compiled for them (chosen once at run time), since the
/// portable build may assume only SSE2.
pub fn dot_row(ty: GgmlType, row: &[u8], input: &DotInput<'_>) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `has_avx2` checked the CPU for AVX2, FMA and F16C.
        return unsafe { dot_row_avx2(ty, row, input) };
    }
    dot_row_portable(ty, row, input)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_row_avx2(ty: GgmlType, row: &[u8], input: &DotInput<'_>) -> Option<f32> {
    match ty {
        GgmlType::Q4_1 => Some(avx2::q4_1(row, input)),
        GgmlType::Q8_0 => Some(avx2::q8_0(row, input.x)),
        GgmlType::Q4_K => Some(avx2::q4_k(row, input)),
        GgmlType::Q6_K => Some(avx2::q6_k(row, input.x)),
        _ => dot_row_portable(ty, row, input),
    }
}

/// Hand-vectorized AVX2 forms of the commonest weight types' dots (the compiler's
/// vectorization of the portable loops unpacks the nibbles lane by lane, which left
/// decode bound by arithmetic at a fifth of llama.cpp's rate): a block's codes are
/// widened 8 at a time (`vpmovzxbd`/`vpmovsxbd`), converted to f32 and multiplied with
/// the activations, then scaled once per block. Same math as `dot_row_portable`, other
/// summation order; the tests hold both to dequantize + an f64 dot.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{DotInput, QK_K};
    use crate::quant::blocks::k4_scale_min;

    /// Σ_{l<16} b[l] · x[l] for 16 unsigned bytes, as 8 lanes.
    #[inline(always)]
    unsafe fn dot16_u8(b: __m128i, x: &[f32]) -> __m256 {
        debug_assert!(x.len() >= 16);
        let a0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
        let a1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)));
        let p = x.as_ptr();
        _mm256_fmadd_ps(
            a1,
            _mm256_loadu_ps(p.add(8)),
            _mm256_mul_ps(a0, _mm256_loadu_ps(p)),
        )
    }

    /// Σ_{l<16} b[l] · x[l] for 16 signed bytes, as 8 lanes.
    #[inline(always)]
    unsafe fn dot16_i8(b: __m128i, x: &[f32]) -> __m256 {
        debug_assert!(x.len() >= 16);
        let a0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
        let a1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
        let p = x.as_ptr();
        _mm256_fmadd_ps(
            a1,
            _mm256_loadu_ps(p.add(8)),
            _mm256_mul_ps(a0, _mm256_loadu_ps(p)),
        )
    }

    #[inline(always)]
    unsafe fn load16(b: &[u8]) -> __m128i {
        debug_assert!(b.len() >= 16);
        _mm_loadu_si128(b.as_ptr() as *const __m128i)
    }

    /// The f16 at byte `at` (F16C's conversion: every class of value, no branch).
    #[inline(always)]
    unsafe fn h(b: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Q4_1: d·q + m per value; Σ d·q·x + m·Σx.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1(row: &[u8], input: &DotInput<'_>) -> f32 {
        let low = _mm_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0.0f32;
        for ((b, xb), &sum) in row
            .chunks_exact(20)
            .zip(input.x.chunks_exact(32))
            .zip(&input.sums)
        {
            let q = load16(&b[4..20]);
            let lo = _mm_and_si128(q, low);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
            let s = _mm256_add_ps(dot16_u8(lo, &xb[..16]), dot16_u8(hi, &xb[16..]));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h(b, 0)), s, acc);
            offset += h(b, 2) * sum;
        }
        hsum(acc) + offset
    }

    /// Q8_0: d·q per value.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0(row: &[u8], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
            let s = _mm256_add_ps(
                dot16_i8(load16(&b[2..18]), &xb[..16]),
                dot16_i8(load16(&b[18..34]), &xb[16..]),
            );
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h(b, 0)), s, acc);
        }
        hsum(acc)
    }

    /// Q4_K: per 32 values a 6-bit scale and min; Σ d·sc·q·x − dmin·m·Σx.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_k(row: &[u8], input: &DotInput<'_>) -> f32 {
        let low = _mm_set1_epi8(0x0F);
        let s = &input.sums;
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0.0f32;
        for (i, (b, xb)) in row
            .chunks_exact(144)
            .zip(input.x.chunks_exact(QK_K))
            .enumerate()
        {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let mut scales = [0u8; 12];
            scales.copy_from_slice(&b[4..16]);
            for p in 0..4 {
                let q = &b[16 + 32 * p..48 + 32 * p];
                let (qa, qb) = (load16(&q[..16]), load16(&q[16..]));
                let (sc1, m1) = k4_scale_min(2 * p, &scales);
                let (sc2, m2) = k4_scale_min(2 * p + 1, &scales);
                let xa = &xb[64 * p..64 * p + 32];
                let xh = &xb[64 * p + 32..64 * p + 64];
                let lo = _mm256_add_ps(
                    dot16_u8(_mm_and_si128(qa, low), &xa[..16]),
                    dot16_u8(_mm_and_si128(qb, low), &xa[16..]),
                );
                let hi = _mm256_add_ps(
                    dot16_u8(_mm_and_si128(_mm_srli_epi16(qa, 4), low), &xh[..16]),
                    dot16_u8(_mm_and_si128(_mm_srli_epi16(qb, 4), low), &xh[16..]),
                );
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc1 as f32), lo, acc);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc2 as f32), hi, acc);
                let sb = 8 * i + 2 * p;
                offset -= dmin * (m1 as f32 * s[sb] + m2 as f32 * s[sb + 1]);
            }
        }
        hsum(acc) + offset
    }

    /// Q6_K: 6-bit codes (low 4 bits in `ql`, high 2 in `qh`) minus 32, a signed 8-bit
    /// scale per 16 values and one f16 `d` per 256.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6_k(row: &[u8], x: &[f32]) -> f32 {
        let (low, two, bias) = (_mm_set1_epi8(0x0F), _mm_set1_epi8(3), _mm_set1_epi8(32));
        // The 2 high bits at `shift` of each qh byte, moved to bits 4..6.
        let high = |qh: __m128i, shift: i32| -> __m128i {
            let v = match shift {
                0 => qh,
                2 => _mm_srli_epi16(qh, 2),
                4 => _mm_srli_epi16(qh, 4),
                _ => _mm_srli_epi16(qh, 6),
            };
            _mm_slli_epi16(_mm_and_si128(v, two), 4)
        };
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in row.chunks_exact(210).zip(x.chunks_exact(QK_K)) {
            let d = h(b, 208);
            for n in 0..2 {
                let ql = &b[64 * n..64 * n + 64];
                let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                let y = &xb[128 * n..128 * n + 128];
                for half in 0..2 {
                    let o = 16 * half;
                    let (qla, qlb) = (load16(&ql[o..o + 16]), load16(&ql[32 + o..48 + o]));
                    let qhv = load16(&qh[o..o + 16]);
                    let codes = [
                        _mm_or_si128(_mm_and_si128(qla, low), high(qhv, 0)),
                        _mm_or_si128(_mm_and_si128(qlb, low), high(qhv, 2)),
                        _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qla, 4), low), high(qhv, 4)),
                        _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qlb, 4), low), high(qhv, 6)),
                    ];
                    for (k, &c) in codes.iter().enumerate() {
                        let s = dot16_i8(_mm_sub_epi8(c, bias), &y[32 * k + o..32 * k + o + 16]);
                        let scale = d * (sc[half + 2 * k] as i8) as f32;
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), s, acc);
                    }
                }
            }
        }
        hsum(acc)
    }
}

// Index loops over fixed lanes of several arrays at once are the shape that vectorizes.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn dot_row_portable(ty: GgmlType, row: &[u8], input: &DotInput<'_>) -> Option<f32> {
    let x = input.x;
    let s = &input.sums;
    Some(match ty {
        GgmlType::F32 => row
            .chunks_exact(4)
            .zip(x)
            .map(|(b, &x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x)
            .sum(),
        GgmlType::F16 => {
            let mut acc = [0.0f32; 8];
            for (w, x) in row.chunks_exact(16).zip(x.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += h(w, 2 * l) * x[l];
                }
            }
            let done = x.len() / 8 * 8;
            let tail: f32 = (done..x.len()).map(|i| h(row, 2 * i) * x[i]).sum();
            acc.iter().sum::<f32>() + tail
        }
        GgmlType::Q8_0 => {
            let mut acc = [0.0f32; 32];
            for (b, xb) in row.chunks_exact(34).zip(x.chunks_exact(32)) {
                let d = h(b, 0);
                for l in 0..32 {
                    acc[l] += d * (b[2 + l] as i8 as f32 * xb[l]);
                }
            }
            acc.iter().sum()
        }
        GgmlType::Q4_0 => {
            // d·(q − 8): Σ d·q·x − 8·d·Σx. Low nibbles are values 0..16, high 16..32.
            let mut acc = [0.0f32; 16];
            let mut offset = 0.0f32;
            for ((b, xb), &sum) in row.chunks_exact(18).zip(x.chunks_exact(32)).zip(s) {
                let d = h(b, 0);
                let qs: &[u8; 16] = b[2..18].try_into().ok()?;
                let (xl, xh): (&[f32; 16], &[f32; 16]) =
                    (xb[..16].try_into().ok()?, xb[16..].try_into().ok()?);
                for l in 0..16 {
                    let v = (qs[l] & 0xF) as f32 * xl[l] + (qs[l] >> 4) as f32 * xh[l];
                    acc[l] += d * v;
                }
                offset -= 8.0 * d * sum;
            }
            acc.iter().sum::<f32>() + offset
        }
        GgmlType::Q4_1 => {
            // d·q + m: Σ d·q·x + m·Σx.
            let mut acc = [0.0f32; 16];
            let mut offset = 0.0f32;
            for ((b, xb), &sum) in row.chunks_exact(20).zip(x.chunks_exact(32)).zip(s) {
                let d = h(b, 0);
                let qs: &[u8; 16] = b[4..20].try_into().ok()?;
                let (xl, xh): (&[f32; 16], &[f32; 16]) =
                    (xb[..16].try_into().ok()?, xb[16..].try_into().ok()?);
                for l in 0..16 {
                    let v = (qs[l] & 0xF) as f32 * xl[l] + (qs[l] >> 4) as f32 * xh[l];
                    acc[l] += d * v;
                }
                offset += h(b, 2) * sum;
            }
            acc.iter().sum::<f32>() + offset
        }
        GgmlType::Q4_K => {
            let mut acc = [0.0f32; 32];
            let mut offset = 0.0f32;
            for (i, (b, xb)) in row.chunks_exact(144).zip(x.chunks_exact(QK_K)).enumerate() {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let mut scales = [0u8; 12];
                scales.copy_from_slice(&b[4..16]);
                let qs = &b[16..144];
                for p in 0..4 {
                    let q = &qs[32 * p..32 * p + 32];
                    let (sc1, m1) = k4_scale_min(2 * p, &scales);
                    let (sc2, m2) = k4_scale_min(2 * p + 1, &scales);
                    let (d1, d2) = (d * sc1 as f32, d * sc2 as f32);
                    let (xa, xb2) = (&xb[64 * p..64 * p + 32], &xb[64 * p + 32..64 * p + 64]);
                    for l in 0..32 {
                        acc[l] +=
                            d1 * (q[l] & 0xF) as f32 * xa[l] + d2 * (q[l] >> 4) as f32 * xb2[l];
                    }
                    let sb = 8 * i + 2 * p;
                    offset -= dmin * (m1 as f32 * s[sb] + m2 as f32 * s[sb + 1]);
                }
            }
            acc.iter().sum::<f32>() + offset
        }
        GgmlType::Q6_K => {
            let mut acc = [0.0f32; 16];
            for (b, xb) in row.chunks_exact(210).zip(x.chunks_exact(QK_K)) {
                let d = h(b, 208);
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let y = &xb[128 * n..128 * n + 128];
                    // Sixteen values share a scale: l in 0..16 and 16..32 of each quarter.
                    for half in 0..2 {
                        let mut part = [0.0f32; 4];
                        let mut lanes = [[0.0f32; 16]; 4];
                        for j in 0..16 {
                            let l = 16 * half + j;
                            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                            lanes[0][j] = q1 as f32 * y[l];
                            lanes[1][j] = q2 as f32 * y[l + 32];
                            lanes[2][j] = q3 as f32 * y[l + 64];
                            lanes[3][j] = q4 as f32 * y[l + 96];
                        }
                        for (k, lane) in lanes.iter().enumerate() {
                            part[k] = lane.iter().sum();
                        }
                        for k in 0..4 {
                            acc[k] += d * (sc[half + 2 * k] as i8) as f32 * part[k];
                        }
                    }
                }
            }
            acc.iter().sum()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, random_blocks};
    use crate::rng::SplitMix64;

    /// Every fused type against dequantize + an f64 dot, on rows of one and several
    /// blocks, within a bound relative to Σ|w·x|.
    #[test]
    fn fused_dot_matches_dequantize_then_dot() {
        let mut rng = SplitMix64::new(crate::kernels::check::test_seed(5));
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            assert!(fused(ty));
            for blocks in [1, 3, 7] {
                let k = blocks * ty.block_elems().max(32);
                let k = if ty.block_elems() == 1 {
                    97 * blocks
                } else {
                    k
                };
                let row = random_blocks(ty, k, &mut rng).unwrap();
                let x = rng.vec_f32(k, -2.0, 2.0);
                let mut w = vec![0.0f32; k];
                dequantize(ty, &row, &mut w).unwrap();
                let want: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let mag: f64 = w
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                // The dispatched form (AVX2 where this CPU has it) and the portable one.
                let input = DotInput::new(&x);
                for (path, got) in [
                    ("dispatched", dot_row(ty, &row, &input)),
                    ("portable", dot_row_portable(ty, &row, &input)),
                ] {
                    let got = got.unwrap() as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * mag + 1e-6,
                        "{ty} {k} values, {path}: {got} vs {want} (Σ|wx| {mag})"
                    );
                }
            }
        }
        assert!(!fused(GgmlType::Q5_K));
        assert!(dot_row(GgmlType::Q5_K, &[], &DotInput::new(&[])).is_none());
    }
}
