//! Token sampling from logits, in llama.cpp's order: repetition penalty over the last
//! `repeat_last_n` tokens (CTRL, Keskar et al. 2019: positive logits divided by the
//! penalty, negative ones multiplied), then top-k, top-p (nucleus, Holtzman et al. 2020)
//! and min-p (probability at least `min_p` times the best) on the unscaled distribution,
//! then temperature and a draw from the seeded generator. Temperature 0 is greedy.

use crate::rng::SplitMix64;
use crate::{Error, Result};

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 (or below) picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches top_p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely; 0 keeps all.
    pub min_p: f32,
    /// 1 disables.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5EED,
        }
    }
}

impl SamplingOptions {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad =
            |what: &str, v: f32| Err(Error::InvalidArgument(format!("sampling: {what} got {v}")));
        if !self.temperature.is_finite() {
            return bad("temperature must be finite,", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1],", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1],", self.min_p);
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat_penalty must be positive,", self.repeat_penalty);
        }
        Ok(())
    }
}

/// A seeded sampler.
pub struct Sampler {
    pub opts: SamplingOptions,
    rng: SplitMix64,
    scratch: Vec<(u32, f32)>,
}

/// The index of the largest logit, the first on ties (greedy decoding).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

impl Sampler {
    pub fn new(opts: SamplingOptions) -> Result<Self> {
        opts.validate()?;
        Ok(Self {
            rng: SplitMix64::new(opts.seed),
            opts,
            scratch: Vec::new(),
        })
    }

    /// Pick the next token from `logits` given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidArgument("sampling from empty logits".into()));
        }
        let o = &self.opts;
        if o.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(o.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / o.repeat_penalty
                    } else {
                        *l * o.repeat_penalty
                    };
                }
            }
        }
        if o.temperature <= 0.0 {
            return Ok(argmax(logits));
        }
        let c = &mut self.scratch;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l)),
        );
        if c.is_empty() {
            return Err(Error::InvalidArgument(
                "sampling: every logit is non-finite".into(),
            ));
        }
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if o.top_k > 0 {
            c.truncate(o.top_k);
        }
        // Probabilities at temperature 1 for top-p and min-p.
        let m = c[0].1;
        let probs: Vec<f64> = c.iter().map(|&(_, l)| ((l - m) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        let mut keep = c.len();
        if o.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p / total;
                if cum >= o.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if o.min_p > 0.0 {
            let floor = o.min_p as f64 * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        c.truncate(keep);
        let weights: Vec<f64> = c
            .iter()
            .map(|&(_, l)| (((l - m) / o.temperature) as f64).exp())
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut r = self.rng.next_f32() as f64 * sum;
        for (i, w) in weights.iter().enumerate() {
            r -= w;
            if r <= 0.0 {
                return Ok(c[i].0);
            }
        }
        Ok(c[c.len() - 1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.0, 2.9]
    }

    #[test]
    fn greedy_and_top_k_1_pick_the_argmax() {
        let mut s = Sampler::new(SamplingOptions::greedy()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[]).unwrap(), 1);
        let mut s = Sampler::new(SamplingOptions {
            top_k: 1,
            temperature: 5.0,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]).unwrap(), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_filters_hold() {
        let opts = SamplingOptions {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.3,
            ..Default::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(SamplingOptions {
                seed,
                ..opts.clone()
            })
            .unwrap();
            (0..200)
                .map(|_| s.sample(&mut logits(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // min_p 0.3 keeps tokens with p >= 0.3 p_max: logits within ln(1/0.3) = 1.2 of 3.0.
        let seen: std::collections::BTreeSet<u32> = draw(9).into_iter().collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 5]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // p ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two.
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..100 {
            let t = s.sample(&mut [3.0, 2.0, 1.0, 0.0], &[]).unwrap();
            assert!(t <= 1, "{t}");
        }
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut s = Sampler::new(SamplingOptions {
            repeat_penalty: 2.0,
            ..SamplingOptions::greedy()
        })
        .unwrap();
        // Token 1 (3.0) halves to 1.5, so 5 (2.9) wins.
        assert_eq!(s.sample(&mut logits(), &[1]).unwrap(), 5);
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(Sampler::new(SamplingOptions {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingOptions {
            temperature: f32::NAN,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingOptions {
            repeat_penalty: -1.0,
            ..Default::default()
        })
        .is_err());
    }
}
