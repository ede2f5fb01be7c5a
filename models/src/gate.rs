//! Attention-Gate files (arXiv 2410.12876; the module itself: `kvedge_runtime::kernels::
//! kv_gate`): the learned eviction gates of one model, written by `tools/train-gates/`,
//! read and checked here so that a gate file never runs with a model it was not trained
//! for and a bad file fails at load with the key or tensor at fault.
//!
//! A gate file is a GGUF with `general.architecture = "kvedge-gate"` (a model GGUF may
//! carry the same tensors and keys itself). Tensors, per layer N (f32 or f16):
//!
//! - `blk.N.attn_gate_q.weight`, `blk.N.attn_gate_k.weight`, `blk.N.attn_gate_v.weight`:
//!   [heads·head_dim rows × n_embd];
//! - `blk.N.attn_gate_out.weight`: [n_kv_heads rows × heads·head_dim];
//! - `blk.N.attn_gate_out.bias`: [n_kv_heads].
//!
//! Metadata `kvedge.gate.*`: `heads`, `head_dim`, `window` (the gate attention's sliding
//! window), `threshold` (keep when the score is above it), `target_keep` (the kept
//! fraction training aimed at), `kept_fraction` (what the trainer measured on held-out
//! text), `n_layers`, `n_embd`, `n_kv_heads`, `model_name` (the base model's
//! `general.name`), and `model_fingerprint`: [`fingerprint`] of the base model, which
//! load compares with the model's own.

use kvedge_runtime::gguf::{GgufFile, MetaValue};
use kvedge_runtime::kernels::kv_gate::{GateShape, GateWeights};
use kvedge_runtime::quant::dequantize;

use crate::hparams::bad;
use crate::{HParams, ModelError};

/// `general.architecture` of a gate file.
pub const GATE_ARCH: &str = "kvedge-gate";
/// Metadata key prefix.
pub const PREFIX: &str = "kvedge.gate";

/// Tensor names of layer `layer`'s gate: q, k, v, out weights and out bias.
pub fn gate_names(layer: usize) -> [String; 5] {
    ["q.weight", "k.weight", "v.weight", "out.weight", "out.bias"]
        .map(|n| format!("blk.{layer}.attn_gate_{n}"))
}

/// FNV-1a (64-bit) of the model's architecture, shape and a few of its tensors' bytes, as
/// hex: the architecture name (its base's, for a `kvedge compress` file) as UTF-8, the
/// shape as u64 little-endian (layers, n_embd, heads, KV heads, head dim, vocabulary),
/// then `output_norm.weight`, `blk.0.attn_norm.weight` and the first 4096 bytes of
/// `blk.0.attn_k.weight`. The trainer computes the same from the file it trained on.
pub fn fingerprint(file: &GgufFile, hp: &HParams) -> Result<String, ModelError> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(hp.arch.name().as_bytes());
    for v in [
        hp.n_layers,
        hp.n_embd,
        hp.n_heads,
        hp.n_kv_heads,
        hp.head_dim,
        hp.n_vocab,
    ] {
        eat(&(v as u64).to_le_bytes());
    }
    for (name, most) in [
        ("output_norm.weight", usize::MAX),
        ("blk.0.attn_norm.weight", usize::MAX),
        ("blk.0.attn_k.weight", 4096),
    ] {
        let data = file.tensor_data(file.tensor(name)?);
        eat(&data[..data.len().min(most)]);
    }
    Ok(format!("{h:016x}"))
}

/// The gates of every layer, dequantized to f32.
#[derive(Clone, Debug)]
pub struct Gates {
    pub shape: GateShape,
    pub layers: Vec<GateWeights>,
    pub threshold: f32,
    pub target_keep: f32,
    /// Kept fraction on the trainer's held-out text (NaN when the file does not say).
    pub kept_fraction: f32,
    /// Where they came from, for reports.
    pub source: String,
}

impl Gates {
    /// Whether `file` carries gate tensors.
    pub fn present(file: &GgufFile) -> bool {
        file.tensor(&gate_names(0)[0]).is_ok()
    }

    /// Read the gates in `gates` for the model `model` (of hyperparameters `hp`); refuses a
    /// file trained for another model.
    pub fn load(gates: &GgufFile, model: &GgufFile, hp: &HParams) -> Result<Self, ModelError> {
        let h = gates.header();
        let key = |k: &str| format!("{PREFIX}.{k}");
        let arch = h.get_str("general.architecture").unwrap_or("");
        if arch != GATE_ARCH && !Self::present(gates) {
            return Err(bad(
                gates,
                "general.architecture",
                &format!("'{GATE_ARCH}' (a gate file from tools/train-gates)"),
                format!("'{arch}'"),
            ));
        }
        let int = |k: &str| -> Result<usize, ModelError> {
            h.get(&key(k))
                .and_then(MetaValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(gates, &key(k), "an unsigned integer", "missing"))
        };
        let float = |k: &str| h.get(&key(k)).and_then(MetaValue::as_f64);
        let want = fingerprint(model, hp)?;
        let got = h
            .get(&key("model_fingerprint"))
            .and_then(MetaValue::as_str)
            .unwrap_or("missing");
        if got != want {
            let trained = h
                .get(&key("model_name"))
                .and_then(MetaValue::as_str)
                .unwrap_or("an unnamed model");
            return Err(bad(
                gates,
                &key("model_fingerprint"),
                &format!(
                    "{want}, the fingerprint of {} (these gates were trained for {trained})",
                    model.name()
                ),
                got,
            ));
        }
        for (k, v) in [
            ("n_layers", hp.n_layers),
            ("n_embd", hp.n_embd),
            ("n_kv_heads", hp.n_kv_heads),
        ] {
            let g = int(k)?;
            if g != v {
                return Err(bad(gates, &key(k), &v.to_string(), g));
            }
        }
        let shape = GateShape {
            n_embd: hp.n_embd,
            heads: int("heads")?,
            head_dim: int("head_dim")?,
            n_kv_heads: hp.n_kv_heads,
            window: int("window")?,
        };
        if shape.heads == 0 || shape.head_dim == 0 || shape.window == 0 {
            return Err(bad(
                gates,
                &key("heads"),
                "positive heads, head_dim and window",
                format!("{shape:?}"),
            ));
        }
        let threshold = float("threshold").unwrap_or(0.5) as f32;
        if !(0.0..1.0).contains(&threshold) {
            return Err(bad(
                gates,
                &key("threshold"),
                "a value in [0, 1)",
                threshold,
            ));
        }
        let (hd, e, nkv) = (shape.width() as u64, hp.n_embd as u64, hp.n_kv_heads as u64);
        let mut layers = Vec::with_capacity(hp.n_layers);
        for l in 0..hp.n_layers {
            let names = gate_names(l);
            let dims = [
                vec![e, hd],
                vec![e, hd],
                vec![e, hd],
                vec![hd, nkv],
                vec![nkv],
            ];
            let mut vals = Vec::with_capacity(5);
            for (name, dims) in names.iter().zip(dims) {
                let t = gates.tensor(name)?;
                if t.dims != dims {
                    return Err(ModelError::TensorShape {
                        file: gates.name().into(),
                        tensor: name.clone(),
                        expected: dims,
                        got: t.dims.clone(),
                    });
                }
                let mut out = vec![0.0; t.n_elements as usize];
                dequantize(t.ty, gates.tensor_data(t), &mut out)?;
                vals.push(out);
            }
            let mut it = vals.into_iter();
            let mut next = || it.next().unwrap_or_default();
            layers.push(GateWeights {
                wq: next(),
                wk: next(),
                wv: next(),
                wo: next(),
                bo: next(),
            });
        }
        Ok(Self {
            shape,
            layers,
            threshold,
            target_keep: float("target_keep").unwrap_or(f64::NAN) as f32,
            kept_fraction: float("kept_fraction").unwrap_or(f64::NAN) as f32,
            source: gates.name().into(),
        })
    }

    /// Bytes of the gates' ring of past keys and values over all layers (f32).
    pub fn ring_bytes(&self) -> u64 {
        (4 * self.shape.ring_len() * self.layers.len()) as u64
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        format!(
            "gates {} ({} heads x {}, window {}, threshold {}, trained kept fraction {:.3})",
            self.source,
            self.shape.heads,
            self.shape.head_dim,
            self.shape.window,
            self.threshold,
            self.kept_fraction
        )
    }
}
