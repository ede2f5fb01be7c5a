//! Perplexity over a token stream, by llama.cpp's `llama-perplexity` protocol so that the
//! two can be compared number for number: the tokens are cut into windows of `n_ctx`
//! (a remainder shorter than a window is dropped), each window runs from an empty cache
//! with its first token replaced by BOS when the vocabulary adds one, and only the second
//! half is scored: the logits at positions n_ctx/2 .. n_ctx-2 predict the next token.
//! PPL = exp(mean negative log-likelihood).
//!
//! [`stream_perplexity`] is the long-context form for compressed caches: one stream of
//! tokens fed in chunks through a single session, so that an evicting cache is compressed
//! to its budget between chunks and every chunk is scored given what the cache kept.

use crate::session::Forward;
use crate::{Error, Result};

/// The outcome of a perplexity run.
#[derive(Clone, Debug)]
pub struct Perplexity {
    pub ppl: f64,
    /// Standard error of the PPL estimate, as llama-perplexity prints it.
    pub ppl_err: f64,
    pub windows: usize,
    pub scored_tokens: usize,
    /// Running PPL after each window (llama-perplexity's `[i]x.xxxx` stream).
    pub running: Vec<f64>,
}

/// -log softmax(logits)[target], in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    -(logits[target as usize] as f64 - m - sum.ln())
}

/// Perplexity of one stream: `tokens` (BOS first when the vocabulary adds one) fed in
/// chunks of `chunk` through one session; every token after the first is scored from the
/// logits of the token before it. Running PPL after each chunk goes to `progress`.
pub fn stream_perplexity(
    fwd: &mut dyn Forward,
    tokens: &[u32],
    chunk: usize,
    n_vocab: usize,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if tokens.len() < 2 || chunk == 0 {
        return Err(Error::InvalidArgument(format!(
            "streaming perplexity needs at least 2 tokens and a chunk > 0, got {} and {chunk}",
            tokens.len()
        )));
    }
    if tokens.len() > fwd.capacity() {
        return Err(Error::InvalidArgument(format!(
            "{} tokens exceed the session context {} (raise --ctx-size, or set a KV policy)",
            tokens.len(),
            fwd.capacity()
        )));
    }
    fwd.reset();
    let n_chunks = tokens.len().div_ceil(chunk);
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(n_chunks);
    let mut prev: Option<Vec<f32>> = None; // logits of the token before this chunk
    for (c, piece) in tokens.chunks(chunk).enumerate() {
        let logits = fwd.forward_all(piece)?;
        if logits.len() != piece.len() * n_vocab {
            return Err(Error::ShapeMismatch {
                what: "perplexity logits".into(),
                expected: piece.len() * n_vocab,
                got: logits.len(),
            });
        }
        for (j, &target) in piece.iter().enumerate() {
            let row = if j == 0 {
                prev.as_deref()
            } else {
                Some(&logits[(j - 1) * n_vocab..j * n_vocab])
            };
            if let Some(row) = row {
                let v = nll(row, target);
                sum += v;
                sum2 += v * v;
                count += 1;
            }
        }
        prev = Some(logits[(piece.len() - 1) * n_vocab..].to_vec());
        let ppl = (sum / count.max(1) as f64).exp();
        running.push(ppl);
        progress(c + 1, n_chunks, ppl);
    }
    let mean = sum / count as f64;
    let var = (sum2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    Ok(Perplexity {
        ppl,
        ppl_err: ppl * (var / (count.max(2) - 1) as f64).sqrt(),
        windows: n_chunks,
        scored_tokens: count,
        running,
    })
}

/// Perplexity of `tokens` in windows of `n_ctx`, at most `max_windows` of them (0: all).
pub fn perplexity(
    fwd: &mut dyn Forward,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    n_vocab: usize,
    max_windows: usize,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if n_ctx < 4 {
        return Err(Error::InvalidArgument(format!(
            "perplexity window must be at least 4 tokens, got {n_ctx}"
        )));
    }
    if n_ctx > fwd.capacity() {
        return Err(Error::InvalidArgument(format!(
            "perplexity window {n_ctx} exceeds the session context {}",
            fwd.capacity()
        )));
    }
    let mut windows = tokens.len() / n_ctx;
    if windows < 1 {
        return Err(Error::InvalidArgument(format!(
            "the text has {} tokens, fewer than one window of {n_ctx}",
            tokens.len()
        )));
    }
    if max_windows > 0 {
        windows = windows.min(max_windows);
    }
    let first = n_ctx / 2;
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(windows);
    for w in 0..windows {
        let mut win = tokens[w * n_ctx..(w + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            win[0] = b;
        }
        fwd.reset();
        let logits = fwd.forward_all(&win)?;
        if logits.len() != n_ctx * n_vocab {
            return Err(Error::ShapeMismatch {
                what: "perplexity logits".into(),
                expected: n_ctx * n_vocab,
                got: logits.len(),
            });
        }
        for j in first..n_ctx - 1 {
            let v = nll(&logits[j * n_vocab..(j + 1) * n_vocab], win[j + 1]);
            sum += v;
            sum2 += v * v;
            count += 1;
        }
        let ppl = (sum / count as f64).exp();
        running.push(ppl);
        progress(w + 1, windows, ppl);
    }
    fwd.reset();
    let mean = sum / count as f64;
    let var = (sum2 / count as f64 - mean * mean).max(0.0);
    let ppl = mean.exp();
    Ok(Perplexity {
        ppl,
        ppl_err: ppl * (var / (count.max(2) - 1) as f64).sqrt(),
        windows,
        scored_tokens: count,
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forward pass whose every position predicts a uniform distribution: PPL = vocab.
    struct Uniform {
        vocab: usize,
        len: usize,
    }

    impl Forward for Uniform {
        fn forward(&mut self, t: &[u32]) -> Result<Vec<f32>> {
            self.len += t.len();
            Ok(vec![0.5; self.vocab])
        }
        fn forward_all(&mut self, t: &[u32]) -> Result<Vec<f32>> {
            self.len += t.len();
            Ok(vec![0.5; self.vocab * t.len()])
        }
        fn len(&self) -> usize {
            self.len
        }
        fn capacity(&self) -> usize {
            64
        }
        fn reset(&mut self) {
            self.len = 0;
        }
        fn kv_bytes(&self) -> u64 {
            0
        }
        fn kv_stats(&self) -> crate::kv::KvStats {
            crate::kv::KvStats::default()
        }
        fn device(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn uniform_predictions_have_perplexity_equal_to_the_vocabulary() {
        let mut f = Uniform { vocab: 7, len: 0 };
        let tokens: Vec<u32> = (0..100).map(|i| i % 7).collect();
        let p = perplexity(&mut f, &tokens, 16, Some(0), 7, 0, &mut |_, _, _| {}).unwrap();
        assert_eq!(p.windows, 6);
        assert_eq!(p.scored_tokens, 6 * 7);
        assert!((p.ppl - 7.0).abs() < 1e-9, "{}", p.ppl);
    }

    #[test]
    fn nll_matches_a_direct_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((nll(&l, 2) - -(3.0f64.exp() / z).ln()).abs() < 1e-12);
    }

    #[test]
    fn too_short_text_is_an_error() {
        let mut f = Uniform { vocab: 7, len: 0 };
        assert!(perplexity(&mut f, &[1, 2, 3], 16, None, 7, 0, &mut |_, _, _| {}).is_err());
        assert!(perplexity(&mut f, &[1; 200], 128, None, 7, 0, &mut |_, _, _| {}).is_err());
    }
}
