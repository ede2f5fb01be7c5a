//! The public entry point: [`Model::load`] opens a GGUF, checks it, reads its tokenizer
//! and chat template and puts its weights on the chosen device; [`Model::session`] makes a
//! [`Session`] with its own KV cache. Weights are shared by all sessions of a model.

use std::path::Path;
use std::sync::Arc;

use kvedge_runtime::chat::ChatTemplate;
use kvedge_runtime::gpu::{DeviceOptions, GpuContext};
use kvedge_runtime::kv::{KvBudget, KvOptions, KvPolicy, KvStats};
use kvedge_runtime::session::{Forward, Session};
use kvedge_runtime::tokenizer::Tokenizer;
use kvedge_runtime::Error;

use crate::llama::cpu::CpuForward;
use crate::llama::gpu::{GpuForward, GpuWeights};
use crate::llama::LlamaModel;
use crate::memory::MemoryLedger;
use crate::{HParams, MemoryReport, ModelError};

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
    /// Most GPU memory (bytes of storage buffers) the weights and all sessions of this
    /// model may take together; None: no cap. GPU device only. See [`crate::memory`].
    pub max_gpu_bytes: Option<u64>,
    /// Run a file with Palu low-rank factors through its original K/V projections
    /// (`--kv-lowrank off`); without factors this changes nothing.
    pub ignore_lowrank: bool,
    /// A gate file for the `gate` KV policy (`--kv-gates FILE`, see [`crate::gate`]).
    pub gates: Option<std::path::PathBuf>,
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
    /// Under a memory cap (`LoadOptions::max_gpu_bytes`), size the KV cache to what the
    /// cap leaves: with an eviction policy the budget (`kv.budget` must be unset), with
    /// the full cache the context (at most `context`). The stats show what was chosen.
    pub fit_memory: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            context: 0,
            chunk: 512,
            kv: KvOptions::default(),
            fit_memory: false,
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
    memory: Arc<MemoryLedger>,
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
        GpuForward::kv_stats(self)
    }
    fn device(&self) -> String {
        self.device_name()
    }
}

impl Forward for CpuForward {
    fn forward(&mut self, tokens: &[u32]) -> kvedge_runtime::Result<Vec<f32>> {
        CpuForward::forward_last(self, tokens).map_err(Error::from)
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
        let mut llama = LlamaModel::open(path)?;
        if opts.ignore_lowrank {
            llama.lowrank = None;
        }
        if let Some(path) = &opts.gates {
            llama.attach_gates(path)?;
        }
        let llama = Arc::new(llama);
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
        let (backend, weight_bytes) = match opts.device {
            Device::Gpu => {
                if let Some(cap) = opts.max_gpu_bytes {
                    // Fail before uploading when the file's tensors alone pass the cap.
                    let f = &llama.file;
                    let need: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
                    if need > cap {
                        return Err(out_of_memory("the weights", need, cap, cap));
                    }
                }
                let ctx = Arc::new(GpuContext::new(&opts.gpu)?);
                let before = ctx.storage_bytes_created();
                let weights = Arc::new(GpuWeights::upload_with_progress(&ctx, &llama, progress)?);
                let bytes = ctx.storage_bytes_created() - before;
                if let Some(cap) = opts.max_gpu_bytes.filter(|&c| bytes > c) {
                    return Err(out_of_memory("the weights", bytes, cap, cap));
                }
                (Backend::Gpu { ctx, weights }, bytes)
            }
            Device::Cpu => {
                if opts.max_gpu_bytes.is_some() {
                    return Err(ModelError::Runtime(Error::InvalidArgument(
                        "a GPU memory cap applies to the gpu device, not the cpu device".into(),
                    )));
                }
                (Backend::Cpu, 0)
            }
        };
        if let Some(cap) = opts.max_gpu_bytes {
            log::info!("GPU memory cap {cap} bytes: weights take {weight_bytes}");
        }
        Ok(Self {
            llama,
            tokenizer,
            template,
            backend,
            memory: Arc::new(MemoryLedger::new(opts.max_gpu_bytes, weight_bytes)),
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

    /// The chat template read from the file, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_deref()
    }

    /// The GPU context the model's weights live on (None on the CPU device), for
    /// benchmarks that measure the device itself or count its allocations.
    pub fn gpu_context(&self) -> Option<&Arc<GpuContext>> {
        match &self.backend {
            Backend::Gpu { ctx, .. } => Some(ctx),
            Backend::Cpu => None,
        }
    }

    /// GPU memory of the weights and the live sessions, against the cap.
    pub fn memory(&self) -> MemoryReport {
        self.memory.report()
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
        if cfg.fit_memory && self.memory.cap.is_none() {
            return Err(ModelError::Runtime(Error::InvalidArgument(
                "fit_memory sizes the KV cache to a memory cap: load the model with one".into(),
            )));
        }
        let fwd: Box<dyn Forward> = match &self.backend {
            Backend::Gpu { ctx, weights } => {
                let build =
                    |context: usize, kv: &KvOptions| -> Result<(GpuForward, u64), ModelError> {
                        let before = ctx.storage_bytes_created();
                        let f = GpuForward::new(
                            ctx.clone(),
                            self.llama.clone(),
                            weights.clone(),
                            context,
                            cfg.chunk,
                            kv,
                        )?;
                        Ok((f, ctx.storage_bytes_created() - before))
                    };
                match self.memory.cap {
                    None => Box::new(build(context, &cfg.kv)?.0),
                    Some(cap) => {
                        // One session measured at a time, so the counter's growth is its own.
                        let _one = self
                            .memory
                            .building
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        let available = self.memory.report().available().unwrap_or(0);
                        let (mut f, bytes) = if cfg.fit_memory {
                            fit_to_memory(&build, context, &cfg.kv, available, cap)?
                        } else {
                            build(context, &cfg.kv)?
                        };
                        if bytes > available {
                            return Err(out_of_memory("the session", bytes, available, cap));
                        }
                        log::info!(
                            "session takes {bytes} of the {available} GPU bytes left under the cap"
                        );
                        f.hold_memory(self.memory.reserve(bytes));
                        Box::new(f)
                    }
                }
            }
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

fn out_of_memory(what: &str, need: u64, available: u64, cap: u64) -> ModelError {
    ModelError::OutOfMemory {
        what: what.into(),
        need,
        available,
        cap,
    }
}

/// A session built at a context and KV configuration, with the GPU bytes it created.
type Measured = Result<(GpuForward, u64), ModelError>;

/// The smallest KV size `fit_to_memory` tries: enough for any policy's sinks and recent
/// tokens.
const FIT_PROBE_SLOTS: usize = 128;

/// Build the largest session that fits `available` bytes: two probe sessions (KV sizes
/// `FIT_PROBE_SLOTS` and twice that) give the fixed bytes and the bytes per slot, the
/// session is built at the size they predict and shrunk while the measurement disagrees.
/// The full cache is sized by its context (at most `context`), the others by their
/// budget in slots.
fn fit_to_memory(
    build: &dyn Fn(usize, &KvOptions) -> Measured,
    context: usize,
    kv: &KvOptions,
    available: u64,
    cap: u64,
) -> Measured {
    if kv.budget.is_some() {
        return Err(ModelError::Runtime(Error::InvalidArgument(
            "fit_memory chooses the KV budget itself: leave the budget unset".into(),
        )));
    }
    let at = |slots: usize| -> Measured {
        if kv.policy == KvPolicy::Full {
            build(slots, kv)
        } else {
            let kv = KvOptions {
                budget: Some(KvBudget::Tokens(slots)),
                ..kv.clone()
            };
            build(context, &kv)
        }
    };
    let s0 = FIT_PROBE_SLOTS.min(context);
    let b0 = at(s0)?.1;
    if b0 > available {
        return Err(out_of_memory(
            &format!("the smallest session ({s0} KV slots)"),
            b0,
            available,
            cap,
        ));
    }
    let s1 = (2 * s0).min(context);
    if s1 == s0 {
        return at(s0);
    }
    let b1 = at(s1)?.1;
    let per_slot = (b1.saturating_sub(b0) / (s1 - s0) as u64).max(1);
    let mut slots = (s0 as u64 + (available - b0) / per_slot).min(context as u64) as usize;
    for _ in 0..4 {
        let (f, bytes) = at(slots)?;
        if bytes <= available {
            log::info!("fit_memory: {slots} KV slots per layer and head ({bytes} bytes)");
            return Ok((f, bytes));
        }
        drop(f);
        let over = (bytes - available).div_ceil(per_slot) as usize;
        slots = slots.saturating_sub(over + 1).max(s0);
    }
    at(s0)
}
