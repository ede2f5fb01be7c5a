//! Streaming detokenization: a token may end in the middle of a UTF-8 character (byte-level
//! BPE splits emoji and CJK across tokens), so bytes are held back until they complete a
//! character; what is released is always valid UTF-8 and nothing is lost.

/// Accumulates token bytes and releases complete UTF-8 text.
#[derive(Default, Debug)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a token's bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        // A byte that can never start valid UTF-8: replace it and go on.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + n);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held back, at the end of a stream (lossy).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_characters() {
        let robot = "🤖".as_bytes(); // 4 bytes
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&robot[..1]), "");
        assert_eq!(d.push(&robot[1..3]), "");
        assert_eq!(d.push(&[robot[3], b'b']), "🤖b");
        assert_eq!(d.push(&[0xFF, b'c']), "\u{FFFD}c");
        assert_eq!(d.push(&robot[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
