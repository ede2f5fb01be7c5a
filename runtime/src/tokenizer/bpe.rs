//! Byte-level BPE (GPT-2; Sennrich et al., 2016, over bytes as in Radford et al., 2019):
//! every byte of a word is first mapped to a printable character (GPT-2's
//! `bytes_to_unicode`), then the adjacent pair with the lowest merge rank is merged until
//! no listed pair is left; the resulting symbols are vocabulary entries.

use std::collections::HashMap;

/// GPT-2's byte-to-character map: printable Latin-1 bytes map to themselves, the others to
/// U+0100 upwards in order.
pub fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        map[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    map
}

/// Merge ranks keyed by "left right": byte-level symbols never contain a plain space
/// (0x20 maps to U+0120), so the key is unambiguous.
pub struct Merges {
    ranks: HashMap<String, u32>,
}

impl Merges {
    /// Parse `tokenizer.ggml.merges` entries ("left right"); returns the index of the first
    /// malformed entry on failure.
    pub fn new(entries: &[String]) -> Result<Self, usize> {
        let mut ranks = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            match e.split_once(' ') {
                Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains(' ') => {
                    ranks.entry(e.clone()).or_insert(i as u32);
                }
                _ => return Err(i),
            }
        }
        Ok(Self { ranks })
    }

    /// Apply the merges to one word's symbols.
    pub fn apply(&self, mut symbols: Vec<String>) -> Vec<String> {
        let mut key = String::new();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                key.clear();
                key.push_str(&symbols[i]);
                key.push(' ');
                key.push_str(&symbols[i + 1]);
                if let Some(&r) = self.ranks.get(&key) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        symbols
    }
}
