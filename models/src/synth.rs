//! Synthetic models: a llama or qwen2 GGUF of any shape with seeded random weights of a
//! chosen quant type and a stub byte-level tokenizer (every byte, a few specials, one
//! merge), marked `kvedge.synthetic = true`. They let tests and benchmarks run every code
//! path (biases, untied output, any quant type, odd head counts) without downloading real
//! weights; their text is meaningless.

use kvedge_runtime::gguf::{GgufWriter, MetaArray, MetaValue};
use kvedge_runtime::quant::{random_blocks, GgmlType};
use kvedge_runtime::rng::SplitMix64;
use kvedge_runtime::tokenizer::byte_to_char;

use crate::{Arch, ModelError};

/// The shape and content of a synthetic model.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub arch: Arch,
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    /// At least 260 (3 specials, 256 bytes, 1 merged token).
    pub vocab: usize,
    pub context: usize,
    /// Type of the matrices (norms and biases are F32).
    pub ty: GgmlType,
    pub tied_output: bool,
    /// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`) instead of byte-level BPE.
    pub spm: bool,
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            arch: Arch::Llama,
            layers: 2,
            dim: 256,
            heads: 4,
            kv_heads: 2,
            ffn: 512,
            vocab: 300,
            context: 256,
            ty: GgmlType::Q8_0,
            tied_output: true,
            spm: false,
            seed: 1,
        }
    }
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Build the GGUF of `spec`.
pub fn synthesize(spec: &SynthSpec) -> Result<GgufWriter, ModelError> {
    let bad = |what: String| ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(what));
    if spec.vocab < 260
        || spec.heads == 0
        || spec.kv_heads == 0
        || !spec.heads.is_multiple_of(spec.kv_heads)
    {
        return Err(bad(format!(
            "synthetic model: vocab >= 260 and heads a multiple of KV heads needed, got {spec:?}"
        )));
    }
    if !spec.dim.is_multiple_of(spec.heads) || !(spec.dim / spec.heads).is_multiple_of(2) {
        return Err(bad(format!(
            "synthetic model: dim {} must split into {} heads of even size",
            spec.dim, spec.heads
        )));
    }
    let a = spec.arch.name();
    let hd = spec.dim / spec.heads;
    let mut w = GgufWriter::new();
    let s = |v: &str| MetaValue::String(v.into());
    let u = |v: usize| MetaValue::U32(v as u32);
    w.set("general.architecture", s(a));
    w.set(
        "general.name",
        s(&format!(
            "kvedge synthetic {a} {}x{} {}",
            spec.layers, spec.dim, spec.ty
        )),
    );
    w.set("kvedge.synthetic", MetaValue::Bool(true));
    w.set(format!("{a}.block_count"), u(spec.layers));
    w.set(format!("{a}.embedding_length"), u(spec.dim));
    w.set(format!("{a}.attention.head_count"), u(spec.heads));
    w.set(format!("{a}.attention.head_count_kv"), u(spec.kv_heads));
    w.set(format!("{a}.feed_forward_length"), u(spec.ffn));
    w.set(format!("{a}.context_length"), u(spec.context));
    w.set(format!("{a}.rope.freq_base"), MetaValue::F32(10000.0));
    w.set(
        format!("{a}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(1e-5),
    );

    if spec.spm {
        spm_vocab(&mut w, spec.vocab)?;
    } else {
        bpe_vocab(&mut w, spec.vocab);
    }
    w.set(
        "tokenizer.chat_template",
        s("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    );

    let mut rng = SplitMix64::new(spec.seed);
    let mut matrix =
        |w: &mut GgufWriter, name: &str, cols: usize, rows: usize| -> Result<(), ModelError> {
            let data = random_blocks(spec.ty, cols * rows, &mut rng)?;
            w.add_tensor(name, spec.ty, &[cols as u64, rows as u64], data)?;
            Ok(())
        };
    let (q, kv) = (spec.heads * hd, spec.kv_heads * hd);
    matrix(&mut w, "token_embd.weight", spec.dim, spec.vocab)?;
    for l in 0..spec.layers {
        let b = |n: &str| format!("blk.{l}.{n}");
        matrix(&mut w, &b("attn_q.weight"), spec.dim, q)?;
        matrix(&mut w, &b("attn_k.weight"), spec.dim, kv)?;
        matrix(&mut w, &b("attn_v.weight"), spec.dim, kv)?;
        matrix(&mut w, &b("attn_output.weight"), q, spec.dim)?;
        matrix(&mut w, &b("ffn_gate.weight"), spec.dim, spec.ffn)?;
        matrix(&mut w, &b("ffn_up.weight"), spec.dim, spec.ffn)?;
        matrix(&mut w, &b("ffn_down.weight"), spec.ffn, spec.dim)?;
    }
    if !spec.tied_output {
        matrix(&mut w, "output.weight", spec.dim, spec.vocab)?;
    }
    let mut vector =
        |w: &mut GgufWriter, name: &str, n: usize, lo: f32, hi: f32| -> Result<(), ModelError> {
            let v: Vec<u8> = rng
                .vec_f32(n, lo, hi)
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            w.add_tensor(name, GgmlType::F32, &[n as u64], v)?;
            Ok(())
        };
    vector(&mut w, "output_norm.weight", spec.dim, 0.8, 1.2)?;
    for l in 0..spec.layers {
        let b = |n: &str| format!("blk.{l}.{n}");
        vector(&mut w, &b("attn_norm.weight"), spec.dim, 0.8, 1.2)?;
        vector(&mut w, &b("ffn_norm.weight"), spec.dim, 0.8, 1.2)?;
        if spec.arch.qkv_bias() {
            vector(&mut w, &b("attn_q.bias"), q, -0.5, 0.5)?;
            vector(&mut w, &b("attn_k.bias"), kv, -0.5, 0.5)?;
            vector(&mut w, &b("attn_v.bias"), kv, -0.5, 0.5)?;
        }
    }
    Ok(w)
}

/// A byte-level BPE vocabulary: specials, every byte, one merged token, unused fillers.
fn bpe_vocab(w: &mut GgufWriter, vocab: usize) {
    let s = |v: &str| MetaValue::String(v.into());
    let u = |v: usize| MetaValue::U32(v as u32);
    let byte_char = byte_to_char();
    let mut tokens: Vec<String> = SPECIALS.iter().map(|t| t.to_string()).collect();
    tokens.extend(byte_char.iter().map(|c| c.to_string()));
    let space = byte_char[b' ' as usize];
    tokens.push(format!("{space}t"));
    let mut types = vec![3i32; SPECIALS.len()];
    types.extend(std::iter::repeat_n(1, 257));
    while tokens.len() < vocab {
        tokens.push(format!("<|unused_{}|>", tokens.len()));
        types.push(5);
    }
    w.set("tokenizer.ggml.model", s("gpt2"));
    w.set("tokenizer.ggml.pre", s("gpt2"));
    w.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    w.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::I32(types)),
    );
    w.set(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::String(vec![format!("{space} t")])),
    );
    w.set("tokenizer.ggml.bos_token_id", u(0));
    w.set("tokenizer.ggml.eos_token_id", u(2));
    w.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
}

/// Pieces of the synthetic SentencePiece vocabulary, best score first (after the single
/// characters, which score lowest).
const SPM_PIECES: &[&str] = &[
    "▁t",
    "▁a",
    "th",
    "he",
    "in",
    "er",
    "an",
    "▁the",
    "▁of",
    "▁and",
    "ing",
    "▁to",
    "is",
    "▁is",
    "on",
    "re",
    "at",
    "en",
    "▁in",
    "ed",
    "nd",
    "es",
    "▁th",
    "▁w",
    "▁s",
    "ou",
    "▁c",
    "▁b",
    "or",
    "it",
    "▁f",
    "▁p",
    "▁m",
    "ll",
    "▁h",
    "▁qu",
    "ick",
    "▁quick",
    "own",
    "▁br",
    "▁brown",
    "▁fox",
    "▁do",
    "og",
    "▁dog",
    "▁la",
    "zy",
    "▁lazy",
    "um",
    "▁jump",
    "▁jumps",
    "▁over",
    "▁▁",
    "▁▁▁▁",
    "12",
    "▁1",
    "00",
    "▁2",
];

/// A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, single characters
/// (ASCII letters, digits, punctuation, '▁'), merged pieces with scores, unused fillers.
fn spm_vocab(w: &mut GgufWriter, vocab: usize) -> Result<(), ModelError> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i32, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let chars = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()";
    for c in chars.chars() {
        tokens.push(c.to_string());
        types.push(1);
        scores.push(-1000.0);
    }
    for (i, p) in SPM_PIECES.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(-(i as f32));
    }
    if tokens.len() > vocab {
        return Err(ModelError::Runtime(kvedge_runtime::Error::InvalidArgument(
            format!(
                "synthetic SentencePiece vocabulary needs at least {} tokens, got --vocab {vocab}",
                tokens.len()
            ),
        )));
    }
    while tokens.len() < vocab {
        tokens.push(format!("<unused{}>", tokens.len()));
        types.push(5);
        scores.push(-1e9);
    }
    w.set("tokenizer.ggml.model", MetaValue::String("llama".into()));
    w.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    w.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::I32(types)),
    );
    w.set(
        "tokenizer.ggml.scores",
        MetaValue::Array(MetaArray::F32(scores)),
    );
    w.set("tokenizer.ggml.unknown_token_id", MetaValue::U32(0));
    w.set("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    w.set("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    w.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    w.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(true));
    Ok(())
}
