//! Reading the golden files of tests/data/golden (made by tools/make_golden.py from
//! llama.cpp): tab-separated `key=value` fields, texts as hex of their UTF-8 bytes.

use std::collections::HashMap;

/// One line's fields.
pub fn fields(line: &str) -> HashMap<&str, &str> {
    line.split('\t').filter_map(|f| f.split_once('=')).collect()
}

pub fn ids(s: &str) -> Vec<u32> {
    s.split_whitespace()
        .map(|t| t.parse().expect("token id"))
        .collect()
}

pub fn hex_text(s: &str) -> String {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect();
    String::from_utf8(bytes).expect("golden text is UTF-8")
}

/// A greedy-generation case: prompt text and ids, llama.cpp's output ids and, at each
/// step, its best tokens with their logits, best first.
pub struct GreedyCase {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub output: Vec<u32>,
    pub topk: Vec<Vec<(u32, f32)>>,
}

fn pair(s: &str) -> (u32, f32) {
    let (id, logit) = s.split_once(':').expect("id:logit");
    (id.parse().expect("id"), logit.parse().expect("logit"))
}

pub fn greedy_cases(text: &str) -> Vec<GreedyCase> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    lines
        .chunks(3)
        .map(|c| {
            let p = fields(c[0]);
            GreedyCase {
                prompt: hex_text(p["prompt"]),
                prompt_ids: ids(p["ids"]),
                output: ids(fields(c[1])["output"]),
                topk: fields(c[2])["topk"]
                    .split_whitespace()
                    .map(|step| step.split(',').map(pair).collect())
                    .collect(),
            }
        })
        .collect()
}
