//! Hyperparameters of the supported architectures, read from GGUF metadata under the
//! `<arch>.` prefix as llama.cpp writes them (`llama.block_count`,
//! `qwen2.attention.head_count_kv`, ...), with llama.cpp's defaults where a key is optional.

use kvedge_runtime::gguf::{GgufError, GgufFile};
use kvedge_runtime::kernels::rope::RopeLayout;

use crate::ModelError;

/// A supported architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Llama, Arch::Qwen2];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// Llama-arch GGUFs have Q/K permuted for adjacent-pair RoPE; qwen2 rotates halves.
    pub fn rope_layout(self) -> RopeLayout {
        match self {
            Arch::Llama => RopeLayout::Adjacent,
            Arch::Qwen2 => RopeLayout::Halves,
        }
    }

    /// Whether Q/K/V projections carry biases.
    pub fn qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }
}

/// RoPE context scaling as declared by `<arch>.rope.scaling.type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    /// Declared but not implemented by kvedge (e.g. yarn, longrope); kept so `inspect`
    /// can show it and the forward pass can refuse it by name.
    Other {
        kind: String,
        factor: f32,
    },
}

/// The tokenizer a GGUF declares.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerInfo {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE), `llama` (SentencePiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of byte-level BPE vocabularies.
    pub pre: Option<String>,
    pub n_tokens: usize,
    pub n_merges: usize,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub has_chat_template: bool,
}

impl TokenizerInfo {
    /// A short description: "byte-level BPE (pre: smollm)".
    pub fn kind(&self) -> String {
        let base = match self.model.as_str() {
            "gpt2" => "byte-level BPE".to_string(),
            "llama" => "SentencePiece (SPM)".to_string(),
            other => format!("'{other}'"),
        };
        match &self.pre {
            Some(p) => format!("{base} (pre: {p})"),
            None => base,
        }
    }
}

/// Hyperparameters of a llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    pub rope_dims: usize,
    pub rope_scaling: RopeScaling,
    pub tokenizer: TokenizerInfo,
}

/// A metadata value that is not what the format allows, naming file, key and values.
pub(crate) fn bad(file: &GgufFile, key: &str, expected: &str, got: impl ToString) -> ModelError {
    ModelError::BadValue {
        file: file.name().into(),
        key: key.into(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

fn meta<T>(file: &GgufFile, r: Result<T, GgufError>) -> Result<T, ModelError> {
    r.map_err(|e| ModelError::Runtime(file.err(e)))
}

impl HParams {
    /// The architecture named by `general.architecture`.
    pub fn arch_of(file: &GgufFile) -> Result<Arch, ModelError> {
        let mut arch = meta(file, file.header().get_str("general.architecture"))?;
        if arch == crate::lowrank::LOWRANK_ARCH {
            // A file with Palu factors names its base architecture here (see lowrank.rs).
            let key = format!("{}.base_architecture", crate::lowrank::PREFIX);
            arch = meta(file, file.header().get_str(&key))?;
        }
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == arch)
            .ok_or_else(|| ModelError::UnsupportedArch {
                file: file.name().into(),
                arch: arch.into(),
                supported: Arch::ALL.map(|a| a.name()).join(", "),
            })
    }

    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let arch = Self::arch_of(file)?;
        let h = file.header();
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let positive = |k: &str| -> Result<usize, ModelError> {
            let v = meta(file, h.get_u64(&key(k)))?;
            if v == 0 || v > u32::MAX as u64 {
                return Err(bad(file, &key(k), "a positive 32-bit count", v));
            }
            Ok(v as usize)
        };
        let n_layers = positive("block_count")?;
        let n_embd = positive("embedding_length")?;
        let n_heads = positive("attention.head_count")?;
        let n_kv_heads = match meta(file, h.opt_u64(&key("attention.head_count_kv")))? {
            Some(_) => positive("attention.head_count_kv")?,
            None => n_heads,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(bad(
                file,
                &key("attention.head_count_kv"),
                &format!("a divisor of the head count {n_heads}"),
                n_kv_heads,
            ));
        }
        let head_dim = match meta(file, h.opt_u64(&key("attention.key_length")))? {
            Some(_) => positive("attention.key_length")?,
            None => {
                if n_embd % n_heads != 0 {
                    return Err(bad(
                        file,
                        &key("embedding_length"),
                        &format!("a multiple of the head count {n_heads}"),
                        n_embd,
                    ));
                }
                n_embd / n_heads
            }
        };
        if let Some(vl) = meta(file, h.opt_u64(&key("attention.value_length")))? {
            if vl as usize != head_dim {
                return Err(bad(
                    file,
                    &key("attention.value_length"),
                    &format!("the key length {head_dim}"),
                    vl,
                ));
            }
        }
        let n_ff = positive("feed_forward_length")?;
        let n_ctx_train = positive("context_length")?;
        let rms_eps =
            meta(file, h.opt_f64(&key("attention.layer_norm_rms_epsilon")))?.unwrap_or(1e-5) as f32;
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(bad(
                file,
                &key("attention.layer_norm_rms_epsilon"),
                "a value in (0, 1)",
                rms_eps,
            ));
        }
        let rope_freq_base =
            meta(file, h.opt_f64(&key("rope.freq_base")))?.unwrap_or(10000.0) as f32;
        if !(rope_freq_base > 1.0 && rope_freq_base.is_finite()) {
            return Err(bad(
                file,
                &key("rope.freq_base"),
                "a finite value > 1",
                rope_freq_base,
            ));
        }
        let rope_dims =
            meta(file, h.opt_u64(&key("rope.dimension_count")))?.map_or(head_dim, |v| v as usize);
        if rope_dims == 0 || rope_dims % 2 != 0 || rope_dims > head_dim {
            return Err(bad(
                file,
                &key("rope.dimension_count"),
                &format!("an even count in 2..={head_dim}"),
                rope_dims,
            ));
        }
        let factor = meta(file, h.opt_f64(&key("rope.scaling.factor")))?.unwrap_or(1.0) as f32;
        let rope_scaling = match meta(file, h.opt_str(&key("rope.scaling.type")))? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear { factor },
            Some(other) => RopeScaling::Other {
                kind: other.into(),
                factor,
            },
        };

        let tokens = h
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len());
        let merges = h
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len());
        let tokenizer = TokenizerInfo {
            model: meta(file, h.opt_str("tokenizer.ggml.model"))?
                .unwrap_or("none")
                .into(),
            pre: meta(file, h.opt_str("tokenizer.ggml.pre"))?.map(str::to_owned),
            n_tokens: tokens,
            n_merges: merges,
            bos: meta(file, h.opt_u64("tokenizer.ggml.bos_token_id"))?,
            eos: meta(file, h.opt_u64("tokenizer.ggml.eos_token_id"))?,
            has_chat_template: h.get("tokenizer.chat_template").is_some(),
        };
        let n_vocab = match meta(file, h.opt_u64(&key("vocab_size")))? {
            Some(v) => v as usize,
            None => file
                .tensor("token_embd.weight")
                .map(|t| t.n_rows() as usize)
                .unwrap_or(tokens),
        };
        Ok(Self {
            arch,
            n_layers,
            n_embd,
            n_heads,
            n_kv_heads,
            head_dim,
            n_ff,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope_freq_base,
            rope_dims,
            rope_scaling,
            tokenizer,
        })
    }

    /// Bytes of K and V for one token across all layers, at `bytes_per_value` (2 for f16).
    pub fn kv_bytes_per_token(&self, bytes_per_value: f64) -> f64 {
        (2 * self.n_layers * self.n_kv_heads * self.head_dim) as f64 * bytes_per_value
    }
}
