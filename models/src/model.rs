//! The public entry point: [`Model::load`] opens a GGUF, checks it, reads its tokenizer
//! and chat template and puts its weights on the chosen device; [`Model::session`] makes a
//! [`Session`] with its own KV cache. Weights are shared by all sessions of a model.

use std::path::Path;
use std::sync::Arc;

use kvedge_runtime::chat::ChatTemplate;
use kvedge_runtime::gpu::{DeviceOptions, GpuContext};
use kvedge_runtime::kv::{KvOptions, KvStats};
use kvedge_runtime::session::{Forward, Session};
use kvedge_runtime::tokenizer::Tokenizer;
use kvedge_runtime::Error;

use crate::llama::cpu::CpuForward;
use crate::llama::gpu::{GpuForward, GpuWeights};
use crate::llama::LlamaModel;
use crate::{HParams, ModelError};

/// Where the model runs. The CPU is used only when asked for, never as a silent fallback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Gpu,
    Cpu,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gpu" => Ok(Device::Gpu),
            "cpu" => Ok(Device::Cpu),
            other => Err(format!("unknown device '{other}': expected gpu or cpu")),
        }
    }
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub device: Device,
    pub gpu: DeviceOptions,
}

/// Settings of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Context length (KV cache positions); 0 means min(training context, 4096).
    pub context: usize,
    /// Prefill chunk in tokens (smaller when a KV budget needs it).
    pub chunk: usize,
    /// KV budget and eviction policy.
    pub kv: KvOptions,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            context: 0,
            chunk: 512,
            kv: KvOptions::default(),
        }
    }
}

enum Backend {
    Gpu {
        ctx: Arc<GpuContext>,
        weights: Arc<GpuWeights>,
    },
    Cpu,
}

/// A loaded model (immutable; sessions hold the mutable state).
pub struct Model {
    llama: Arc<LlamaModel>,
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    backend: Backend,
}

impl Forward for GpuForward {
    fn forward(&mut self, tokens: &[u32]) -> kvedge_runtime::Result<Vec<f32>> {
        GpuForward::forward(self, tokens).map_err(Error::from)
    }
    fn forward_all(&mut self, tokens: &[u32]) -> kvedge_runtime::Result<Vec<f32>> {
        GpuForward::forward_all(self, tokens).map_err(Error::from)
    }
    fn len(&self) -> usize {
        self.kv().position()
    }
    fn capacity(&self) -> usize {
        GpuForward::capacity(self)
    }
    fn reset(&mut self) {
        GpuForward::reset(self)
    }
    fn kv_bytes(&self) -> u64 {
        self.kv().kv_bytes()
    }
    fn kv_stats(&self) -> KvStats {
        self.kv().stats()
    }
    fn device(&self) -> String {
        self.device_name()
    }
}

impl Forward for CpuForward {
    fn forward(&mut self, tokens: &[u32]) -> kvedge_runtime::Result<Vec<f32>> {
        let n = tokens.len();
        let vocab = self.n_vocab();
        let all = CpuForward::forward(self, tokens).map_err(Error::from)?;
        Ok(all[(n - 1) * vocab..].to_vec())
    }
    fn forward_all(&mut self, tokens: &[u32]) -> kvedge_runtime::Result<Vec<f32>> {
        CpuForward::forward(self, tokens).map_err(Error::from)
    }
    fn len(&self) -> usize {
        CpuForward::len(self)
    }
    fn capacity(&self) -> usize {
        CpuForward::capacity(self)
    }
    fn reset(&mut self) {
        CpuForward::reset(self)
    }
    fn kv_bytes(&self) -> u64 {
        CpuForward::kv_bytes(self)
    }
    fn kv_stats(&self) -> KvStats {
        CpuForward::kv_stats(self)
    }
    fn device(&self) -> String {
        format!("CPU ({} threads)", CpuForward::threads(self))
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Runtime(e) => e,
            other => Error::Model(other.to_string()),
        }
    }
}

impl Model {
    /// Load a GGUF model. `progress(done, total)` is called as weight tensors are uploaded.
    pub fn load(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let llama = Arc::new(LlamaModel::open(path)?);
        let tokenizer = Arc::new(Tokenizer::from_gguf(&llama.file)?);
        if tokenizer.n_vocab() != llama.hp.n_vocab {
            return Err(ModelError::BadValue {
                file: llama.file.name().into(),
                key: "tokenizer.ggml.tokens".into(),
                expected: format!("{} tokens (the embedding's rows)", llama.hp.n_vocab),
                got: tokenizer.n_vocab().to_string(),
            });
        }
        let template = ChatTemplate::from_gguf(&llama.file, &tokenizer)?.map(Arc::new);
        let backend = match opts.device {
            Device::Gpu => {
                let ctx = Arc::new(GpuContext::new(&opts.gpu)?);
                let weights = Arc::new(GpuWeights::upload_with_progress(&ctx, &llama, progress)?);
                Backend::Gpu { ctx, weights }
            }
            Device::Cpu => Backend::Cpu,
        };
        Ok(Self {
            llama,
            tokenizer,
            template,
            backend,
        })
    }

    pub fn hparams(&self) -> &HParams {
        &self.llama.hp
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// A new session with its own KV cache.
    pub fn session(&self, cfg: &SessionConfig) -> Result<Session, ModelError> {
        let context = if cfg.context == 0 {
            self.llama.hp.n_ctx_train.min(4096)
        } else {
            cfg.context
        };
        if context > self.llama.hp.n_ctx_train {
            log::warn!(
                "context {context} exceeds the model's training context {}",
                self.llama.hp.n_ctx_train
            );
        }
        let fwd: Box<dyn Forward> = match &self.backend {
            Backend::Gpu { ctx, weights } => Box::new(GpuForward::new(
                ctx.clone(),
                self.llama.clone(),
                weights.clone(),
                context,
                cfg.chunk,
                &cfg.kv,
            )?),
            Backend::Cpu => Box::new(CpuForward::new(
                self.llama.clone(),
                context,
                cfg.chunk,
                &cfg.kv,
            )?),
        };
        Ok(Session::new(
            fwd,
            self.tokenizer.clone(),
            self.template.clone(),
        ))
    }
}
