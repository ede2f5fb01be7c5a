//! SentencePiece-style tokenization of `tokenizer.ggml.model = llama` vocabularies
//! (Llama 2, Mistral, TinyLlama; Kudo & Richardson 2018), as llama.cpp's
//! `llm_tokenizer_spm` does it: spaces become U+2581 ('▁'), the text is cut into UTF-8
//! characters, and the adjacent pair whose concatenation is the vocabulary entry with the
//! highest score is merged, repeatedly (ties: the leftmost pair). A merge only happens when
//! the result is a token, so each final piece is either a token or a single character that
//! is not, which is spelled out as byte tokens `<0xXX>` (byte fallback).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One symbol of the text being merged: a byte range, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

/// Tokenize already-escaped text (spaces as '▁') into `out`. `lookup` maps a piece to its
/// token and score; `byte_token` maps a byte to its fallback token.
pub fn tokenize(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<(u32, f32)>,
    byte_token: &dyn Fn(u8) -> Option<u32>,
    out: &mut Vec<u32>,
) -> Result<(), u8> {
    let mut symbols: Vec<Symbol> = Vec::new();
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: i as isize - 1,
            next: if start + len == text.len() {
                -1
            } else {
                i as isize + 1
            },
        });
    }
    let mut queue = BinaryHeap::new();
    let try_add =
        |left: isize, right: isize, symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (symbols[left as usize], symbols[right as usize]);
            let piece = &text[l.start..r.start + r.len];
            if let Some((_, score)) = lookup(piece) {
                queue.push(Bigram {
                    left: left as usize,
                    right: right as usize,
                    score,
                    size: piece.len(),
                });
            }
        };
    for i in 1..symbols.len() {
        try_add(i as isize - 1, i as isize, &symbols, &mut queue);
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue; // one side was merged away since this pair was queued
        }
        symbols[b.left].len += r.len;
        symbols[b.right].len = 0;
        symbols[b.left].next = r.next;
        if r.next >= 0 {
            symbols[r.next as usize].prev = b.left as isize;
        }
        let (prev, next) = (symbols[b.left].prev, symbols[b.left].next);
        try_add(prev, b.left as isize, &symbols, &mut queue);
        try_add(b.left as isize, next, &symbols, &mut queue);
    }
    let mut i: isize = if symbols.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let sym = symbols[i as usize];
        let piece = &text[sym.start..sym.start + sym.len];
        match lookup(piece) {
            Some((id, _)) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(byte_token(b).ok_or(b)?);
                }
            }
        }
        i = sym.next;
    }
    Ok(())
}
