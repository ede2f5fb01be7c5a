//! Pre-tokenization of byte-level BPE vocabularies: the text is cut into words by the
//! regular expressions that `tokenizer.ggml.pre` names, exactly as llama.cpp does
//! (llama-vocab.cpp): each expression in turn splits every piece left by the previous
//! one, and the text between matches is kept as pieces of its own. The expressions need
//! look-ahead (`\s+(?!\S)`), which the `regex` crate lacks; `fancy-regex` adds it on top
//! of `regex`'s Unicode classes.

use fancy_regex::Regex;

use crate::{Error, Result};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers kvedge knows, by their `tokenizer.ggml.pre` names.
pub const KNOWN: &[&str] = &["default", "gpt2", "smollm", "llama-bpe", "llama3", "qwen2"];

/// A compiled pre-tokenizer: its expressions, applied in order.
pub struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(pre: &str) -> Result<Self> {
        let exprs: &[&str] = match pre {
            "default" | "gpt2" => &[GPT2],
            "smollm" => &[r"\p{N}", GPT2],
            "llama-bpe" | "llama3" => &[LLAMA3],
            "qwen2" => &[QWEN2],
            other => {
                return Err(Error::Tokenizer(format!(
                    "unknown pre-tokenizer '{other}' (tokenizer.ggml.pre); known: {}",
                    KNOWN.join(", ")
                )))
            }
        };
        let regexes = exprs
            .iter()
            .map(|e| {
                Regex::new(e).map_err(|err| Error::Tokenizer(format!("pre-tokenizer regex: {err}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self { regexes })
    }

    /// Cut `text` into words (byte ranges covering the whole text, in order).
    pub fn split<'t>(&self, text: &'t str) -> Result<Vec<&'t str>> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m = m.map_err(|e| Error::Tokenizer(format!("pre-tokenizer: {e}")))?;
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_splits_words_spaces_and_contractions() {
        let p = PreTokenizer::new("gpt2").unwrap();
        assert_eq!(
            p.split("Hello world, it's 42!  ok").unwrap(),
            ["Hello", " world", ",", " it", "'s", " 42", "!", " ", " ok"]
        );
    }

    #[test]
    fn smollm_splits_every_digit() {
        let p = PreTokenizer::new("smollm").unwrap();
        assert_eq!(p.split("x 123").unwrap(), ["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        assert!(PreTokenizer::new("bogus").is_err());
    }
}
