//! Tokenization against llama.cpp's on the golden texts (tests/data/golden/*.tokens.txt,
//! made by tools/make_golden.py): prose, code, numbers, whitespace runs, emoji, non-Latin
//! scripts, special tokens; with and without BOS/EOS. Decoding must give the text back.

use kvedge_models::synth::{synthesize, SynthSpec};
use kvedge_runtime::gguf::GgufFile;
use kvedge_runtime::tokenizer::{StreamDecoder, Tokenizer};
use kvedge_tests::{data, golden, model, QWEN25_15B, SMOLLM2};

/// Token texts llama.cpp turns into control tokens whatever the vocabulary says (its
/// end-of-generation list in llama-vocab.cpp, where `</s>` was added for PaddleOCR).
/// kvedge keeps the file's own token types, so a golden text spelling one of these out in
/// a vocabulary that has it as a normal token (Qwen2.5 has `</s>` = 128247) is expected to
/// differ; the test names each such case.
const LLAMA_CPP_FORCED_CONTROL: &[&str] = &["</s>"];

fn tokenization_matches_llama_cpp(file: &str, golden: &str) {
    let Some(path) = model(file) else { return };
    let tok = Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    check_golden(&tok, file, golden);
}

fn check_golden(tok: &Tokenizer, file: &str, golden: &str) {
    let text = std::fs::read_to_string(data(&format!("golden/{golden}"))).unwrap();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f = golden::fields(line);
        let s = golden::hex_text(f["text"]);
        let want = golden::ids(f["ids"]);
        let got = tok.encode(&s, f["add_special"] == "1", true).unwrap();
        let forced = want.iter().find(|&&t| {
            tok.token_type(t) == Some(kvedge_runtime::tokenizer::TokenType::Normal)
                && LLAMA_CPP_FORCED_CONTROL.contains(&tok.token_text(t).unwrap_or(""))
        });
        if let Some(&t) = forced {
            eprintln!(
                "{file}: {s:?} differs by design: llama.cpp forces normal token {t} {:?} to control",
                tok.token_text(t).unwrap_or("")
            );
            assert_ne!(got, want);
            continue;
        }
        assert_eq!(got, want, "{file}: tokens of {s:?}");
        // Lossless round trip, also when streamed token by token.
        // The text round trip excludes the BOS that add_special put in front.
        let skip =
            usize::from(f["add_special"] == "1" && got.first().copied() == tok.bos && tok.add_bos);
        let plain: Vec<u32> = got[skip..].to_vec();
        // SentencePiece prefixes a space to text after a special token, so such texts do
        // not round-trip (llama.cpp's decoding keeps that space too).
        let after_special = plain.iter().any(|&t| {
            matches!(
                tok.token_type(t),
                Some(kvedge_runtime::tokenizer::TokenType::Control)
            )
        });
        if tok.adds_space_prefix() && after_special {
            n += 1;
            continue;
        }
        let back = tok.decode(&plain, true).unwrap();
        assert_eq!(back, s, "{file}: decode of {s:?}");
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &t in &plain {
            streamed.push_str(&stream.push(&tok.token_bytes(t, true).unwrap()));
        }
        streamed.push_str(&stream.finish());
        let streamed = match streamed.strip_prefix(' ') {
            Some(rest) if tok.adds_space_prefix() => rest.to_string(),
            _ => streamed,
        };
        assert_eq!(streamed, s, "{file}: streamed decode of {s:?}");
        n += 1;
    }
    assert!(n >= 30, "{golden}: only {n} cases");
    eprintln!("{file}: {n} golden tokenizations identical to llama.cpp's");
}

#[test]
fn smollm2_tokenization_matches_llama_cpp() {
    tokenization_matches_llama_cpp(SMOLLM2, "smollm2.tokens.txt");
}

#[test]
fn qwen25_tokenization_matches_llama_cpp() {
    tokenization_matches_llama_cpp(QWEN25_15B, "qwen2.5-1.5b.tokens.txt");
}

#[test]
fn control_tokens_are_text_unless_parsed() {
    let Some(path) = model(SMOLLM2) else { return };
    let tok = Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(tok.encode("<|im_end|>", false, true).unwrap(), [im_end]);
    let spelled = tok.encode("<|im_end|>", false, false).unwrap();
    assert!(spelled.len() > 1 && !spelled.contains(&im_end));
    assert!(tok.is_end_of_generation(im_end));
    assert_eq!(tok.decode(&[im_end], false).unwrap(), "");
}

#[test]
fn synthetic_sentencepiece_tokenization_matches_llama_cpp() {
    // The vocabulary of `kvedge synth --tokenizer spm --vocab 512` (scores, byte
    // fallback, '▁' space escaping), tokenized by llama.cpp for the golden file.
    let spec = SynthSpec {
        spm: true,
        vocab: 512,
        ..Default::default()
    };
    let bytes = synthesize(&spec).unwrap().to_bytes();
    let tok = Tokenizer::from_gguf(&GgufFile::from_bytes("synthetic-spm", bytes).unwrap()).unwrap();
    check_golden(&tok, "synthetic SPM", "synthetic-spm.tokens.txt");
}
