//! Attention-Gate (Zeng et al., "In-context KV-Cache Eviction for LLMs via
//! Attention-Gate", arXiv 2410.12876): a small learned module per layer that reads the
//! layer's normalized hidden states and scores each token per KV head; the `gate` policy
//! evicts the lowest scores first. The paper publishes no code; this is our design, the
//! same in the trainer (`tools/train-gates/gates.py`) and here.
//!
//! For a token at position p with normalized hidden state x (the input of the layer's
//! Q/K/V projections), with `heads` gate heads of width `head_dim` (hd = heads·head_dim):
//!
//!   q, k, v = Wq·x, Wk·x, Wv·x                       (hd each, no bias, no RoPE)
//!   o_h = Σ_j softmax_j(q_h·k_{j,h} / sqrt(head_dim)) v_{j,h}
//!         over the positions j in [p - window + 1, p]  (causal, a sliding window)
//!   score = sigmoid(Wo·o + bo)                        (one per KV head)
//!
//! The window bounds what decode must keep to run the gate: the last `window` tokens'
//! gate keys and values per layer (a ring of `window` × 2·hd floats), whatever the
//! context; a gate attending over the whole context would need a second cache growing
//! with every token, which is what eviction is meant to avoid. Without RoPE the gate sees
//! position only through the window's edge; the model's own keys carry position already.
//!
//! `shaders/kv_gate.wgsl` runs it on the GPU in three dispatches per chunk (project,
//! score, ring update); [`reference`] is the scalar CPU form the CPU device runs, the
//! trainer's parity fixture checks and the kernel's test holds the GPU to.

use bytemuck::{Pod, Zeroable};

use super::{need_f32, plain_pipeline, to_u32};
use crate::gpu::GpuContext;
use crate::{Error, Result};

const WGSL: &str = include_str!("../../../shaders/kv_gate.wgsl");

/// Widest gate (heads · head_dim) the kernel holds in registers.
pub const MAX_WIDTH: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct KvGateParams {
    n_embd: u32,
    hd: u32,
    heads: u32,
    head_dim: u32,
    n_kv: u32,
    window: u32,
    m: u32,
    pos0: u32,
    slot0: u32,
    capacity: u32,
    mode: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<KvGateParams>() == 48);

/// The gate module's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateShape {
    pub n_embd: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Outputs: one score per KV head of the model.
    pub n_kv_heads: usize,
    /// Positions each gate query attends to (itself included).
    pub window: usize,
}

impl GateShape {
    /// Width of the gate's q, k and v (heads · head_dim).
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Floats of one layer's ring of past gate keys and values.
    pub fn ring_len(&self) -> usize {
        self.window * 2 * self.width()
    }
}

/// One layer's gate weights in f32, row-major as in the GGUF: `wq`, `wk`, `wv` are
/// [hd rows][n_embd], `wo` is [n_kv_heads rows][hd], `bo` is [n_kv_heads].
#[derive(Clone, Debug, PartialEq)]
pub struct GateWeights {
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub bo: Vec<f32>,
}

impl GateWeights {
    /// Check the lengths against `shape`.
    pub fn check(&self, shape: &GateShape) -> Result<()> {
        let (hd, e, nkv) = (shape.width(), shape.n_embd, shape.n_kv_heads);
        for (name, got, want) in [
            ("wq", self.wq.len(), hd * e),
            ("wk", self.wk.len(), hd * e),
            ("wv", self.wv.len(), hd * e),
            ("wo", self.wo.len(), nkv * hd),
            ("bo", self.bo.len(), nkv),
        ] {
            if got != want {
                return Err(Error::InvalidArgument(format!(
                    "gate {name}: expected {want} values for {shape:?}, got {got}"
                )));
            }
        }
        Ok(())
    }
}

impl GateWeights {
    /// The layout the kernel reads: wq, wk, wv rows, then wo, then bo.
    pub fn packed(&self) -> Vec<f32> {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.bo]
            .iter()
            .flat_map(|v| v.iter().copied())
            .collect()
    }
}

/// The GPU buffers of one layer's gate: its packed weights ([`GateWeights::packed`]), its
/// ring of past keys and values ([`GateShape::ring_len`] f32) and a scratch of at least
/// m · 3 · hd f32 for a chunk's projections.
pub struct GateBuffers<'a> {
    pub weights: &'a wgpu::Buffer,
    pub ring: &'a wgpu::Buffer,
    pub qkv: &'a wgpu::Buffer,
}

/// Record the gate scores of `m` tokens at positions `pos0..` whose normalized hidden
/// states are `xn` ([m][n_embd] f32) into `score` ([n_kv_heads][capacity] f32) at slots
/// `slot0..slot0 + m`, and update the ring, as [`reference`] does.
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    shape: &GateShape,
    xn: &wgpu::Buffer,
    bufs: &GateBuffers,
    score: &wgpu::Buffer,
    capacity: usize,
    m: usize,
    pos0: usize,
    slot0: usize,
) -> Result<()> {
    let hd = shape.width();
    if m == 0 {
        return Ok(());
    }
    if hd > MAX_WIDTH || shape.window == 0 || slot0 + m > capacity {
        return Err(Error::InvalidArgument(format!(
            "kv_gate: gate width {hd} (at most {MAX_WIDTH}), window {}, slots {slot0}..{} of {capacity}",
            shape.window,
            slot0 + m
        )));
    }
    let e = shape.n_embd;
    need_f32("kv_gate xn", xn, m * e)?;
    need_f32(
        "kv_gate weights",
        bufs.weights,
        3 * hd * e + shape.n_kv_heads * (hd + 1),
    )?;
    need_f32("kv_gate ring", bufs.ring, shape.ring_len())?;
    need_f32("kv_gate qkv", bufs.qkv, m * 3 * hd)?;
    need_f32("kv_gate score", score, shape.n_kv_heads * capacity)?;
    let pipeline = plain_pipeline(ctx, "kv_gate", WGSL)?;
    for (mode, threads) in [(0u32, m * 3 * hd), (1, m), (2, m * 2 * hd)] {
        let params = KvGateParams {
            n_embd: to_u32("kv_gate n_embd", e)?,
            hd: hd as u32,
            heads: shape.heads as u32,
            head_dim: shape.head_dim as u32,
            n_kv: shape.n_kv_heads as u32,
            window: to_u32("kv_gate window", shape.window)?,
            m: to_u32("kv_gate m", m)?,
            pos0: to_u32("kv_gate pos0", pos0)?,
            slot0: slot0 as u32,
            capacity: to_u32("kv_gate capacity", capacity)?,
            mode,
            _pad: 0,
        };
        let ub = ctx.uniform("kv_gate.params", &params);
        let bg = ctx.bind(
            "kv_gate",
            &pipeline,
            &[xn, bufs.weights, bufs.qkv, bufs.ring, score, &ub],
        );
        let groups = to_u32("kv_gate threads", threads)?.div_ceil(64);
        ctx.dispatch(encoder, "kv_gate", &pipeline, &bg, (groups, 1));
    }
    Ok(())
}

fn matvec(w: &[f32], x: &[f32], rows: usize, out: &mut [f32]) {
    let cols = x.len();
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        *o = w[r * cols..(r + 1) * cols]
            .iter()
            .zip(x)
            .map(|(a, b)| a * b)
            .sum();
    }
}

/// Gate scores of `m` tokens at positions `pos0..pos0 + m` whose normalized hidden states
/// are `xn` ([m][n_embd]). `ring` holds the gate keys and values of the `window` positions
/// before `pos0` (slot p % window: k then v, 2·hd floats) and is updated in place, so that
/// calls chunk by chunk equal one call over the whole sequence. Returns [m][n_kv_heads]
/// scores in (0, 1).
pub fn reference(
    shape: &GateShape,
    w: &GateWeights,
    xn: &[f32],
    m: usize,
    pos0: usize,
    ring: &mut [f32],
) -> Result<Vec<f32>> {
    w.check(shape)?;
    let (e, hd, dh, win) = (shape.n_embd, shape.width(), shape.head_dim, shape.window);
    if xn.len() != m * e || ring.len() != shape.ring_len() || win == 0 {
        return Err(Error::InvalidArgument(format!(
            "gate: {} inputs for {m} tokens of {e}, ring {} for {}",
            xn.len(),
            ring.len(),
            shape.ring_len()
        )));
    }
    let scale = 1.0 / (dh as f32).sqrt();
    let mut out = vec![0.0f32; m * shape.n_kv_heads];
    let (mut q, mut o) = (vec![0.0f32; hd], vec![0.0f32; hd]);
    let mut att = vec![0.0f32; win];
    for t in 0..m {
        let p = pos0 + t;
        let x = &xn[t * e..(t + 1) * e];
        matvec(&w.wq, x, hd, &mut q);
        let at = (p % win) * 2 * hd;
        let (k, v) = ring[at..at + 2 * hd].split_at_mut(hd);
        matvec(&w.wk, x, hd, k);
        matvec(&w.wv, x, hd, v);
        let first = (p + 1).saturating_sub(win);
        let n = p + 1 - first;
        for h in 0..shape.heads {
            let qh = &q[h * dh..(h + 1) * dh];
            let mut max = f32::NEG_INFINITY;
            for (i, j) in (first..=p).enumerate() {
                let kj = &ring[(j % win) * 2 * hd + h * dh..][..dh];
                att[i] = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(att[i]);
            }
            let mut sum = 0.0f32;
            for a in &mut att[..n] {
                *a = (*a - max).exp();
                sum += *a;
            }
            let oh = &mut o[h * dh..(h + 1) * dh];
            oh.fill(0.0);
            for (i, j) in (first..=p).enumerate() {
                let vj = &ring[(j % win) * 2 * hd + hd + h * dh..][..dh];
                for (acc, vv) in oh.iter_mut().zip(vj) {
                    *acc += att[i] / sum * vv;
                }
            }
        }
        let s = &mut out[t * shape.n_kv_heads..(t + 1) * shape.n_kv_heads];
        matvec(&w.wo, &o, shape.n_kv_heads, s);
        for (z, b) in s.iter_mut().zip(&w.bo) {
            *z = 1.0 / (1.0 + (-(*z + b)).exp());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(shape: &GateShape, seed: u64) -> GateWeights {
        let mut rng = SplitMix64::new(seed);
        let (hd, e, nkv) = (shape.width(), shape.n_embd, shape.n_kv_heads);
        GateWeights {
            wq: rng.vec_f32(hd * e, -0.5, 0.5),
            wk: rng.vec_f32(hd * e, -0.5, 0.5),
            wv: rng.vec_f32(hd * e, -0.5, 0.5),
            wo: rng.vec_f32(nkv * hd, -0.5, 0.5),
            bo: rng.vec_f32(nkv, -0.5, 0.5),
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The gate written out with f64 and the whole history, no ring.
    fn direct(shape: &GateShape, w: &GateWeights, xn: &[f32], m: usize) -> Vec<f32> {
        let (e, hd, dh) = (shape.n_embd, shape.width(), shape.head_dim);
        let proj = |wm: &[f32], t: usize| -> Vec<f64> {
            (0..hd)
                .map(|r| {
                    (0..e)
                        .map(|c| wm[r * e + c] as f64 * xn[t * e + c] as f64)
                        .sum()
                })
                .collect()
        };
        let k: Vec<_> = (0..m).map(|t| proj(&w.wk, t)).collect();
        let v: Vec<_> = (0..m).map(|t| proj(&w.wv, t)).collect();
        let mut out = Vec::new();
        for t in 0..m {
            let q = proj(&w.wq, t);
            let js: Vec<usize> = ((t + 1).saturating_sub(shape.window)..=t).collect();
            let mut o = vec![0.0f64; hd];
            for h in 0..shape.heads {
                let r = h * dh..(h + 1) * dh;
                let s: Vec<f64> = js
                    .iter()
                    .map(|&j| {
                        q[r.clone()]
                            .iter()
                            .zip(&k[j][r.clone()])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for (i, &j) in js.iter().enumerate() {
                    for d in r.clone() {
                        o[d] += (s[i] - mx).exp() / z * v[j][d];
                    }
                }
            }
            for kv in 0..shape.n_kv_heads {
                let zz: f64 = (0..hd)
                    .map(|d| w.wo[kv * hd + d] as f64 * o[d])
                    .sum::<f64>()
                    + w.bo[kv] as f64;
                out.push((1.0 / (1.0 + (-zz).exp())) as f32);
            }
        }
        out
    }

    #[test]
    fn gate_matches_direct_form_in_any_chunking() {
        for (i, &(e, heads, dh, nkv, win, m)) in [
            (24usize, 2usize, 4usize, 3usize, 5usize, 17usize),
            (64, 1, 8, 2, 64, 40),
            (33, 3, 5, 1, 1, 9),
        ]
        .iter()
        .enumerate()
        {
            let shape = GateShape {
                n_embd: e,
                heads,
                head_dim: dh,
                n_kv_heads: nkv,
                window: win,
            };
            let w = random(&shape, 100 + i as u64);
            let xn = SplitMix64::new(7 + i as u64).vec_f32(m * e, -1.0, 1.0);
            let want = direct(&shape, &w, &xn, m);
            for chunk in [1usize, 3, m] {
                let mut ring = vec![0.0; shape.ring_len()];
                let mut got = Vec::new();
                let mut p = 0;
                while p < m {
                    let n = chunk.min(m - p);
                    got.extend(
                        reference(&shape, &w, &xn[p * e..(p + n) * e], n, p, &mut ring).unwrap(),
                    );
                    p += n;
                }
                let err = max_abs_diff(&got, &want);
                assert!(err < 1e-5, "shape {shape:?} chunk {chunk}: max error {err}");
            }
        }
    }

    #[test]
    fn gpu_gate_matches_reference() {
        let Some(ctx) = crate::kernels::check::test_context() else {
            return;
        };
        // (n_embd, heads, head_dim, n_kv, window, chunks): chunks longer than the window,
        // shorter, and single tokens, so the ring is read before and after it wraps.
        for (i, &(e, heads, dh, nkv, win, chunks)) in [
            (
                40usize,
                2usize,
                8usize,
                3usize,
                8usize,
                &[13usize, 3, 1, 1, 20][..],
            ),
            (64, 3, 5, 2, 64, &[70, 1, 5][..]),
            (33, 1, 16, 1, 1, &[4, 1][..]),
        ]
        .iter()
        .enumerate()
        {
            let shape = GateShape {
                n_embd: e,
                heads,
                head_dim: dh,
                n_kv_heads: nkv,
                window: win,
            };
            let w = random(&shape, 40 + i as u64);
            let n: usize = chunks.iter().sum();
            let cap = n + 3;
            let xn = SplitMix64::new(crate::kernels::check::test_seed(70 + i as u64)).vec_f32(
                n * e,
                -1.0,
                1.0,
            );
            let mut ring = vec![0.0; shape.ring_len()];
            let want = reference(&shape, &w, &xn, n, 0, &mut ring).unwrap();
            let wbuf = ctx.upload("w", &w.packed()).unwrap();
            let rbuf = ctx.storage_f32("ring", shape.ring_len()).unwrap();
            let score = ctx.storage_f32("score", nkv * cap).unwrap();
            let most = *chunks.iter().max().unwrap();
            let qkv = ctx.storage_f32("qkv", most * 3 * shape.width()).unwrap();
            let bufs = GateBuffers {
                weights: &wbuf,
                ring: &rbuf,
                qkv: &qkv,
            };
            let mut p = 0;
            for &c in chunks {
                let x = ctx.upload("xn", &xn[p * e..(p + c) * e]).unwrap();
                let mut enc = ctx.encoder("gate");
                // Scores go to slots 2.. (as after an eviction: slot != position).
                record(ctx, &mut enc, &shape, &x, &bufs, &score, cap, c, p, p + 2).unwrap();
                ctx.submit_wait(enc).unwrap();
                p += c;
            }
            let got = ctx.read_f32(&score, nkv * cap).unwrap();
            let mut err = 0.0f32;
            for t in 0..n {
                for h in 0..nkv {
                    err = err.max((got[h * cap + t + 2] - want[t * nkv + h]).abs());
                }
            }
            assert!(
                err < 1e-5,
                "shape {shape:?} chunks {chunks:?}: max error {err}"
            );
            let got_ring = ctx.read_f32(&rbuf, shape.ring_len()).unwrap();
            assert_eq!(got_ring.len(), ring.len());
            let rerr = max_abs_diff(&got_ring, &ring);
            assert!(rerr < 1e-5, "shape {shape:?}: ring differs by {rerr}");
        }
    }

    #[test]
    fn gate_refuses_wrong_lengths() {
        let shape = GateShape {
            n_embd: 8,
            heads: 1,
            head_dim: 4,
            n_kv_heads: 2,
            window: 4,
        };
        let mut w = random(&shape, 1);
        let mut ring = vec![0.0; shape.ring_len()];
        assert!(reference(&shape, &w, &[0.0; 7], 1, 0, &mut ring).is_err());
        w.bo.pop();
        let e = reference(&shape, &w, &[0.0; 8], 1, 0, &mut ring).unwrap_err();
        assert!(e.to_string().contains("gate bo"), "{e}");
    }
}
