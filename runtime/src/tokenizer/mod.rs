//! Tokenizers from the GGUF vocabulary (`tokenizer.ggml.*`): byte-level BPE
//! (`tokenizer.ggml.model = gpt2`: GPT-2, SmolLM, Qwen2, Llama 3) with the pre-tokenizer
//! `tokenizer.ggml.pre` names, and SentencePiece (`llama`: Llama 2, Mistral, TinyLlama)
//! with scores and byte fallback; special and control tokens, BOS/EOS as the file asks,
//! and lossless decoding (a [`StreamDecoder`] holds back partial UTF-8 across streamed
//! tokens). Behaviour follows llama.cpp's `llama-vocab.cpp`, and the
//! tests hold it to llama.cpp's output on golden texts.

mod bpe;
pub use bpe::byte_to_char;
mod pretokenize;
mod spm;
mod stream;

use std::collections::HashMap;

pub use pretokenize::PreTokenizer;
pub use stream::StreamDecoder;

use crate::gguf::{GgufFile, MetaArray};
use crate::{Error, Result};

/// `tokenizer.ggml.token_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_id(v: i64) -> Self {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// A byte-level BPE tokenizer read from a GGUF file.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    ids: HashMap<String, u32>,
    kind: Kind,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<(String, u32)>,
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

/// The vocabulary's algorithm.
enum Kind {
    /// Byte-level BPE (`gpt2`).
    Bpe {
        merges: bpe::Merges,
        pre: PreTokenizer,
        /// Llama 3: a word that is a token is taken whole, before any merge.
        ignore_merges: bool,
    },
    /// SentencePiece (`llama`): scores per token.
    Spm {
        scores: Vec<f32>,
        add_space_prefix: bool,
    },
}

/// A piece of text after special-token partitioning.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

fn tok_err(file: &GgufFile, what: String) -> Error {
    Error::Tokenizer(format!("{}: {what}", file.name()))
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let h = file.header();
        let model = h.opt_str("tokenizer.ggml.model").map_err(|e| file.err(e))?;
        match model {
            Some("gpt2") | Some("llama") => {}
            Some(other) => {
                return Err(tok_err(
                    file,
                    format!("tokenizer model '{other}' is not supported (supported: gpt2 = byte-level BPE, llama = SentencePiece)"),
                ))
            }
            None => return Err(tok_err(file, "no tokenizer (tokenizer.ggml.model is missing)".into())),
        }
        let tokens = match h.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(MetaArray::String(v)) if !v.is_empty() => v.clone(),
            _ => {
                return Err(tok_err(
                    file,
                    "tokenizer.ggml.tokens must be a non-empty array of strings".into(),
                ))
            }
        };
        let n = tokens.len();
        let types: Vec<TokenType> = match h
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            None => vec![TokenType::Normal; n],
            Some(MetaArray::I32(v)) if v.len() == n => {
                v.iter().map(|&t| TokenType::from_id(t as i64)).collect()
            }
            Some(a) => {
                return Err(tok_err(
                    file,
                    format!(
                        "tokenizer.ggml.token_type: expected {n} i32 values, got {} of {}",
                        a.len(),
                        a.elem_type().name()
                    ),
                ))
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match h.opt_u64(key).map_err(|e| file.err(e))? {
                Some(v) if (v as usize) < n => Ok(Some(v as u32)),
                Some(v) => Err(tok_err(
                    file,
                    format!("{key} = {v} is outside the vocabulary of {n}"),
                )),
                None => Ok(None),
            }
        };
        let flag =
            |key: &str, default: bool| h.get(key).and_then(|v| v.as_bool()).unwrap_or(default);
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !t.is_empty()
                    && matches!(
                        types[*i],
                        TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                    )
            })
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_char = bpe::byte_to_char();
        let char_byte = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let eot = match id("tokenizer.ggml.eot_token_id")? {
            Some(t) => Some(t),
            None => [
                "<|im_end|>",
                "<|eot_id|>",
                "<|end_of_text|>",
                "<end_of_turn>",
            ]
            .iter()
            .find_map(|s| ids.get(*s).copied())
            .filter(|&t| types[t as usize] == TokenType::Control),
        };
        let kind = if model == Some("llama") {
            let scores =
                match h.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                    Some(MetaArray::F32(v)) if v.len() == n => v.clone(),
                    Some(a) => {
                        return Err(tok_err(
                            file,
                            format!(
                                "tokenizer.ggml.scores: expected {n} f32 values, got {} of {}",
                                a.len(),
                                a.elem_type().name()
                            ),
                        ))
                    }
                    None => return Err(tok_err(
                        file,
                        "a SentencePiece vocabulary needs tokenizer.ggml.scores, which is missing"
                            .into(),
                    )),
                };
            Kind::Spm {
                scores,
                add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
            }
        } else {
            let merges = match h.get("tokenizer.ggml.merges").and_then(|v| v.as_array()) {
                Some(MetaArray::String(v)) if !v.is_empty() => bpe::Merges::new(v).map_err(|i| {
                    tok_err(file, format!("tokenizer.ggml.merges[{i}] is not of the form 'left right': {:?}", v[i]))
                })?,
                _ => {
                    return Err(tok_err(
                        file,
                        "a byte-level BPE vocabulary needs tokenizer.ggml.merges, which is missing or empty".into(),
                    ))
                }
            };
            let pre_name = h
                .opt_str("tokenizer.ggml.pre")
                .map_err(|e| file.err(e))?
                .unwrap_or("default");
            Kind::Bpe {
                merges,
                pre: PreTokenizer::new(pre_name)?,
                ignore_merges: matches!(pre_name, "llama-bpe" | "llama3"),
            }
        };
        let spm = matches!(kind, Kind::Spm { .. });
        Ok(Self {
            kind,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot,
            add_bos: flag("tokenizer.ggml.add_bos_token", spm),
            add_eos: flag("tokenizer.ggml.add_eos_token", false),
            tokens,
            types,
            ids,
            specials,
            byte_char,
            char_byte,
        })
    }

    /// Whether encoding prefixes a space to the text (SentencePiece vocabularies that ask
    /// for it): streamed pieces then start with that space, `decode` drops it.
    pub fn adds_space_prefix(&self) -> bool {
        matches!(
            self.kind,
            Kind::Spm {
                add_space_prefix: true,
                ..
            }
        )
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of a token given by its exact text (e.g. `<|im_end|>`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Whether generation should stop at this token (EOS, EOT).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// Split on special tokens, as llama.cpp does: each special (longest first) cuts every
    /// remaining text fragment at its occurrences. Control tokens only when
    /// `parse_special`; user-defined tokens always.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        for (s, id) in &self.specials {
            let ty = self.types[*id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            if !text.contains(s.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(t) => {
                        let mut rest = t;
                        while let Some(p) = rest.find(s.as_str()) {
                            if p > 0 {
                                next.push(Fragment::Text(&rest[..p]));
                            }
                            next.push(Fragment::Token(*id));
                            rest = &rest[p + s.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    fn encode_word(
        &self,
        merges: &bpe::Merges,
        ignore_merges: bool,
        word: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mapped: String = word.bytes().map(|b| self.byte_char[b as usize]).collect();
        if ignore_merges {
            if let Some(&id) = self.ids.get(&mapped) {
                out.push(id);
                return Ok(());
            }
        }
        let symbols: Vec<String> = mapped.chars().map(String::from).collect();
        for sym in merges.apply(symbols) {
            match self.ids.get(&sym) {
                Some(&id) => out.push(id),
                None => {
                    // Not a vocabulary entry: fall back to its single characters.
                    for c in sym.chars() {
                        let id = self
                            .ids
                            .get(c.encode_utf8(&mut [0; 4]) as &str)
                            .ok_or_else(|| {
                                Error::Tokenizer(format!(
                                    "byte {:#04x} of {word:?} has no token in the vocabulary",
                                    self.char_byte.get(&c).copied().unwrap_or(0)
                                ))
                            })?;
                        out.push(*id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Token ids of `text`. `add_special` adds BOS/EOS where the vocabulary asks for them;
    /// `parse_special` turns the text of control tokens (e.g. `<|im_start|>`) into those
    /// tokens instead of spelling it out.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        // SPM: a space is prefixed to text that starts the input or follows a special token.
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match (frag, &self.kind) {
                (Fragment::Token(id), _) => {
                    out.push(id);
                    prev_special = true;
                }
                (
                    Fragment::Text(t),
                    Kind::Bpe {
                        merges,
                        pre,
                        ignore_merges,
                    },
                ) => {
                    for word in pre.split(t)? {
                        self.encode_word(merges, *ignore_merges, word, &mut out)?;
                    }
                }
                (
                    Fragment::Text(t),
                    Kind::Spm {
                        scores,
                        add_space_prefix,
                    },
                ) => {
                    let mut escaped = String::with_capacity(t.len() + 3);
                    if *add_space_prefix && prev_special {
                        escaped.push('\u{2581}');
                    }
                    escaped.extend(t.chars().map(|c| if c == ' ' { '\u{2581}' } else { c }));
                    let lookup =
                        |piece: &str| self.ids.get(piece).map(|&id| (id, scores[id as usize]));
                    let byte_token = |b: u8| {
                        self.ids
                            .get(&format!("<0x{b:02X}>"))
                            .or_else(|| self.ids.get(&(b as char).to_string()))
                            .copied()
                    };
                    spm::tokenize(&escaped, &lookup, &byte_token, &mut out).map_err(|b| {
                        Error::Tokenizer(format!(
                            "byte {b:#04x} has neither a <0x{b:02X}> token nor a character token"
                        ))
                    })?;
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// The bytes a token stands for. Control tokens render as nothing unless
    /// `show_special`; user-defined tokens as their text.
    pub fn token_bytes(&self, id: u32, show_special: bool) -> Result<Vec<u8>> {
        let text = self.token_text(id).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "token id {id} is outside the vocabulary of {}",
                self.n_vocab()
            ))
        })?;
        let ty = self.types[id as usize];
        if let Kind::Spm { .. } = self.kind {
            return Ok(match ty {
                TokenType::Byte => text
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]),
                TokenType::Normal | TokenType::UserDefined => {
                    text.replace('\u{2581}', " ").into_bytes()
                }
                TokenType::Control | TokenType::Unknown if show_special => text.as_bytes().to_vec(),
                _ => Vec::new(),
            });
        }
        Ok(match ty {
            TokenType::Normal | TokenType::Byte => text
                .chars()
                .flat_map(|c| match self.char_byte.get(&c) {
                    Some(&b) => vec![b],
                    None => c.to_string().into_bytes(),
                })
                .collect(),
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Control | TokenType::Unknown if show_special => text.as_bytes().to_vec(),
            _ => Vec::new(),
        })
    }

    /// Text of a whole sequence of tokens (invalid UTF-8, which only a cut sequence can
    /// hold, becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], show_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id, show_special)?);
        }
        // SPM: the space the encoder prefixed is not part of the text.
        if let Kind::Spm {
            add_space_prefix: true,
            ..
        } = self.kind
        {
            if bytes.first() == Some(&b' ') {
                bytes.remove(0);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
