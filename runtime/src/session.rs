//! A session: one conversation's state over a model's forward pass. It owns the KV cache
//! (inside its [`Forward`]), the token history, the tokenizer and chat template, and
//! streams generated text as an iterator of pieces. Prompt tokens run as one prefill call
//! (chunked inside the forward pass), then one forward call per generated token.
//!
//! Chat turns extend the cache: the conversation is re-rendered with the model's template
//! and only the text past what the cache already holds is tokenized and run (no re-prefill
//! of earlier turns). A template that does not extend its earlier rendering falls back to
//! a full re-prefill, logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chat::{ChatTemplate, Message};
use crate::sample::{Sampler, SamplingOptions};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// A model's forward pass over its own KV cache (GPU or CPU).
pub trait Forward: Send {
    /// Run `tokens` at the next positions; the logits of the last one.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Run `tokens` at the next positions; the logits of every one, [tokens][vocab].
    fn forward_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Tokens seen (the next position); with eviction more than the cache holds.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions the session can reach: the context, or unbounded (u32::MAX) when the
    /// KV cache evicts.
    fn capacity(&self) -> usize;
    /// Forget every position.
    fn reset(&mut self);
    /// Exact bytes of the KV cache.
    fn kv_bytes(&self) -> u64;
    /// What the cache holds and has evicted.
    fn kv_stats(&self) -> crate::kv::KvStats;
    /// Where it runs, for reports ("GPU llvmpipe (Vulkan)", "CPU 2 threads").
    fn device(&self) -> String;
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    /// Extra stop strings (end-of-generation tokens always stop).
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingOptions::default(),
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    EndOfGeneration,
    MaxTokens,
    StopString,
    ContextFull,
}

/// Counters of a session.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    pub context_used: usize,
    pub context_size: usize,
    pub kv_bytes: u64,
    /// Budget, slots used, tokens evicted.
    pub kv: crate::kv::KvStats,
    pub last_finish: Option<FinishReason>,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// One conversation over a model.
pub struct Session {
    fwd: Box<dyn Forward>,
    tok: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    history: Vec<u32>,
    /// Chat state: the messages so far and the rendered text the cache holds.
    messages: Vec<Message>,
    rendered: String,
    stats: Stats,
    /// Logits after the last forward call, for the next sample.
    logits: Option<Vec<f32>>,
}

impl Session {
    pub fn new(
        fwd: Box<dyn Forward>,
        tok: Arc<Tokenizer>,
        template: Option<Arc<ChatTemplate>>,
    ) -> Self {
        let stats = Stats {
            context_size: fwd.capacity(),
            kv_bytes: fwd.kv_bytes(),
            ..Stats::default()
        };
        Self {
            fwd,
            tok,
            template,
            history: Vec::new(),
            messages: Vec::new(),
            rendered: String::new(),
            stats,
            logits: None,
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.context_used = self.fwd.len();
        s.kv = self.fwd.kv_stats();
        s
    }

    pub fn device(&self) -> String {
        self.fwd.device()
    }

    /// The forward pass itself (evaluation drives it directly).
    pub fn forward_mut(&mut self) -> &mut dyn Forward {
        &mut *self.fwd
    }

    /// Tokens in the context so far.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forget the conversation.
    pub fn reset(&mut self) {
        self.fwd.reset();
        self.history.clear();
        self.messages.clear();
        self.rendered.clear();
        self.logits = None;
    }

    /// Run prompt tokens into the context.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "empty prompt: nothing to run".into(),
            ));
        }
        let free = self.fwd.capacity() - self.fwd.len();
        if tokens.len() > free {
            return Err(Error::InvalidArgument(format!(
                "prompt of {} tokens does not fit: the context holds {} tokens and {} are used (raise the context size)",
                tokens.len(),
                self.fwd.capacity(),
                self.fwd.len()
            )));
        }
        let t = Instant::now();
        self.logits = Some(self.fwd.forward(tokens)?);
        self.stats.prefill_time += t.elapsed();
        self.stats.prompt_tokens += tokens.len();
        self.history.extend_from_slice(tokens);
        Ok(())
    }

    /// Continue `prompt` (raw text, special tokens parsed, BOS as the vocabulary asks when
    /// the context is empty) and stream the completion.
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions) -> Result<Generation<'_>> {
        let ids = self.tok.encode(prompt, self.history.is_empty(), true)?;
        self.feed(&ids)?;
        Generation::new(self, opts)
    }

    /// Add a user message to the conversation and stream the assistant's reply; call
    /// [`Generation::finish_turn`] (or let the iterator run out) to record the reply.
    pub fn chat(&mut self, user: &str, opts: &GenerateOptions) -> Result<Generation<'_>> {
        let template = self.template.clone().ok_or_else(|| {
            Error::InvalidArgument(
                "this model has no chat template (tokenizer.chat_template); use generate".into(),
            )
        })?;
        let mut msgs = self.messages.clone();
        msgs.push(Message::new("user", user));
        let full = template.apply(&msgs, true)?;
        let delta = match full.strip_prefix(self.rendered.as_str()) {
            Some(d) if !self.rendered.is_empty() => d.to_string(),
            _ => {
                if !self.rendered.is_empty() {
                    log::info!("chat template does not extend the previous turn; re-running the conversation");
                }
                self.fwd.reset();
                self.history.clear();
                full.clone()
            }
        };
        // BOS goes first in an empty context, unless the template wrote it itself (many
        // Llama/Mistral templates start with `{{ bos_token }}`).
        let bos_text = self
            .tok
            .bos
            .and_then(|b| self.tok.token_text(b))
            .unwrap_or("");
        let add_bos =
            self.history.is_empty() && (bos_text.is_empty() || !delta.starts_with(bos_text));
        let ids = self.tok.encode(&delta, add_bos, true)?;
        self.feed(&ids)?;
        self.messages = msgs;
        self.rendered = full;
        let mut g = Generation::new(self, opts)?;
        g.chat_turn = true;
        Ok(g)
    }
}

/// A streaming generation: each item is the next piece of text (possibly empty while a
/// character is incomplete).
pub struct Generation<'s> {
    session: &'s mut Session,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: Vec<String>,
    max_tokens: usize,
    produced: usize,
    text: String,
    done: bool,
    chat_turn: bool,
}

impl<'s> Generation<'s> {
    fn new(session: &'s mut Session, opts: &GenerateOptions) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(opts.sampling.clone())?,
            decoder: StreamDecoder::new(),
            stop: opts
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            max_tokens: opts.max_tokens,
            produced: 0,
            text: String::new(),
            done: false,
            chat_turn: false,
            session,
        })
    }

    /// The text generated so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The session's counters now, mid-generation (for a progress display).
    pub fn stats(&self) -> Stats {
        self.session.stats()
    }

    fn end(&mut self, why: FinishReason) {
        self.done = true;
        self.session.stats.last_finish = Some(why);
        if self.chat_turn {
            let reply = self.text.clone();
            let s = &mut *self.session;
            s.messages.push(Message::new("assistant", &reply));
            s.rendered.push_str(&reply);
            self.chat_turn = false;
        }
    }

    /// Stop now and record the reply (chat) so far.
    pub fn finish_turn(mut self) -> String {
        if !self.done {
            self.end(FinishReason::MaxTokens);
        }
        std::mem::take(&mut self.text)
    }

    fn step(&mut self) -> Result<Option<String>> {
        if self.done {
            return Ok(None);
        }
        if self.produced >= self.max_tokens {
            self.end(FinishReason::MaxTokens);
            return Ok(None);
        }
        let s = &mut *self.session;
        let mut logits = s
            .logits
            .take()
            .ok_or_else(|| Error::InvalidArgument("generate: no prompt has been run".into()))?;
        let token = self.sampler.sample(&mut logits, &s.history)?;
        if s.tok.is_end_of_generation(token) {
            self.end(FinishReason::EndOfGeneration);
            return Ok(None);
        }
        let piece = self.decoder.push(&s.tok.token_bytes(token, false)?);
        self.produced += 1;
        s.stats.generated_tokens += 1;
        s.history.push(token);
        if s.fwd.len() + 1 > s.fwd.capacity() {
            self.text.push_str(&piece);
            self.end(FinishReason::ContextFull);
            return Ok(Some(piece));
        }
        let t = Instant::now();
        s.logits = Some(s.fwd.forward(&[token])?);
        s.stats.decode_time += t.elapsed();
        self.text.push_str(&piece);
        if let Some(stop) = self.stop.iter().find(|st| self.text.ends_with(st.as_str())) {
            let keep = self.text.len() - stop.len();
            self.text.truncate(keep);
            self.end(FinishReason::StopString);
            return Ok(Some(piece));
        }
        Ok(Some(piece))
    }
}

impl Drop for Generation<'_> {
    fn drop(&mut self) {
        // A reply abandoned mid-way still belongs to the conversation the cache holds.
        if self.chat_turn && !self.done {
            self.end(FinishReason::MaxTokens);
        }
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
