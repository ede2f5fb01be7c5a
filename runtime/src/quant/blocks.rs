//! `#[repr(C)]` block layouts of the quantized ggml types, byte-for-byte as in
//! `ggml-common.h`, with their scalar dequantizers. Each struct's size is asserted at compile
//! time against the GGUF block size.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::QK_K;

/// Q4_0: 32 weights, `w = d * (q - 8)`, q in 0..16; low nibbles hold weights 0..16, high
/// nibbles 16..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// Q4_1: 32 weights, `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// Q5_0: 32 weights, `w = d * (q - 16)`, the fifth bit of weight j in bit j of `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q5_1: 32 weights, `w = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q8_0: 32 weights, `w = d * q`, q a signed byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// Q2_K: 256 weights in 16 sub-blocks of 16; each sub-block has a 4-bit scale and a 4-bit
/// min (`scales[i] = sc | m << 4`); `w = d * sc * q - dmin * m`, q 2-bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: f16,
    pub dmin: f16,
}

/// Q3_K: 256 weights in 16 sub-blocks of 16 with 6-bit signed scales (packed in 12 bytes);
/// q is 2 low bits in `qs` plus a high bit in `hmask`; `w = d * (sc - 32) * (q - 4·!h)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: f16,
}

/// Q4_K: 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins (packed in 12 bytes);
/// `w = d * sc * q - dmin * m`, q 4-bit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// Q5_K: as Q4_K with a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K: 256 weights in 16 sub-blocks of 16 with signed 8-bit scales; q is 4 low bits in
/// `ql` and 2 high bits in `qh`; `w = d * sc * (q - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// A block type with a scalar dequantizer.
pub trait QuantBlock: Pod {
    const ELEMS: usize;
    fn dequant(&self, out: &mut [f32]);
}

impl QuantBlock for BlockQ4_0 {
    const ELEMS: usize = 32;
    fn dequant(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for j in 0..16 {
            out[j] = ((self.qs[j] & 0xF) as i32 - 8) as f32 * d;
            out[j + 16] = ((self.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ4_1 {
    const ELEMS: usize = 32;
    fn dequant(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for j in 0..16 {
            out[j] = (self.qs[j] & 0xF) as f32 * d + m;
            out[j + 16] = (self.qs[j] >> 4) as f32 * d + m;
        }
    }
}

impl QuantBlock for BlockQ5_0 {
    const ELEMS: usize = 32;
    fn dequant(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            out[j] = (((self.qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
            out[j + 16] = (((self.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ5_1 {
    const ELEMS: usize = 32;
    fn dequant(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            out[j] = ((self.qs[j] & 0xF) as u32 | h0) as f32 * d + m;
            out[j + 16] = ((self.qs[j] >> 4) as u32 | h1) as f32 * d + m;
        }
    }
}

impl QuantBlock for BlockQ8_0 {
    const ELEMS: usize = 32;
    fn dequant(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(self.qs.iter()) {
            *o = q as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ2K {
    const ELEMS: usize = QK_K;
    fn dequant(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        let mut y = 0;
        let mut is = 0;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = dmin * (sc >> 4) as f32;
                    for l in 0..16 {
                        out[y] = dl * ((q[16 * half + l] >> shift) & 3) as f32 - ml;
                        y += 1;
                    }
                }
            }
        }
    }
}

/// The 16 six-bit scales of a Q3_K block, unpacked from their 12 bytes (minus 32).
pub fn q3k_scales(packed: &[u8; 12]) -> [i32; 16] {
    let mut s = [0i32; 16];
    for (i, v) in s.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0xF
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *v = (low | (high << 4)) as i32 - 32;
    }
    s
}

impl QuantBlock for BlockQ3K {
    const ELEMS: usize = QK_K;
    fn dequant(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let scales = q3k_scales(&self.scales);
        let mut y = 0;
        let mut is = 0;
        let mut m = 1u8;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let dl = d * scales[is] as f32;
                    is += 1;
                    for l in 0..16 {
                        let i = 16 * half + l;
                        let low = ((q[i] >> shift) & 3) as i32;
                        let sub = if self.hmask[i] & m != 0 { 0 } else { 4 };
                        out[y] = dl * (low - sub) as f32;
                        y += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K block, unpacked from their 12 bytes
/// (ggml's `get_scale_min_k4`).
pub fn k4_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl QuantBlock for BlockQ4K {
    const ELEMS: usize = QK_K;
    fn dequant(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for p in 0..4 {
            let q = &self.qs[32 * p..32 * p + 32];
            let (sc1, m1) = k4_scale_min(2 * p, &self.scales);
            let (sc2, m2) = k4_scale_min(2 * p + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            for l in 0..32 {
                out[64 * p + l] = d1 * (q[l] & 0xF) as f32 - m1;
                out[64 * p + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

impl QuantBlock for BlockQ5K {
    const ELEMS: usize = QK_K;
    fn dequant(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for p in 0..4 {
            let ql = &self.qs[32 * p..32 * p + 32];
            let (u1, u2) = (1u8 << (2 * p), 2u8 << (2 * p));
            let (sc1, m1) = k4_scale_min(2 * p, &self.scales);
            let (sc2, m2) = k4_scale_min(2 * p + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                out[64 * p + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                out[64 * p + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

impl QuantBlock for BlockQ6K {
    const ELEMS: usize = QK_K;
    fn dequant(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for n in 0..2 {
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            let sc = &self.scales[8 * n..8 * n + 8];
            let y = &mut out[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}
