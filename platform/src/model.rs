//! Models: load and free, what a model is (`kvedge_model_info`), its GPU memory under a
//! cap (`kvedge_model_memory`), and the text tools that need only the model: tokenize,
//! detokenize, and the chat template. A model handle may be used from any number of
//! threads at once; its sessions keep the weights alive, so it may be freed before them.

use std::ffi::{c_char, c_void, CString};

use kvedge_models::{Device, LoadOptions, Model};
use kvedge_runtime::chat::Message;

use crate::handles::{from_handle, to_handle, Registry};
use crate::status::{guard, out_arg, owned_c_string, str_arg, FfiError, FfiResult, Status};

/// Opaque model handle (`kvedge_model *`).
pub enum KvedgeModel {}

pub(crate) static MODELS: Registry<Model> = Registry::new("model");

pub const KVEDGE_DEVICE_GPU: i32 = 0;
pub const KVEDGE_DEVICE_CPU: i32 = 1;

/// `kvedge_progress_callback`: weight tensors uploaded so far and in all.
pub type ProgressCallback = Option<unsafe extern "C" fn(u64, u64, *mut c_void)>;

/// `kvedge_model_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModelParams {
    /// KVEDGE_DEVICE_GPU or KVEDGE_DEVICE_CPU.
    pub device: i32,
    /// Adapter index as `kvedge devices` lists them; -1 picks the best.
    pub adapter: i32,
    /// Most GPU memory the weights and all sessions may take; 0: no cap.
    pub max_gpu_bytes: u64,
    pub progress: ProgressCallback,
    pub progress_user_data: *mut c_void,
    /// Attention-Gate file for the gate policy; NULL: none.
    pub kv_gates: *const c_char,
}

/// `kvedge_model_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelInfo {
    pub n_vocab: u32,
    pub n_ctx_train: u32,
    pub n_layers: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub has_chat_template: bool,
}

/// `kvedge_memory`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// The cap given at load; 0: none.
    pub cap_bytes: u64,
    pub weights_bytes: u64,
    pub sessions_bytes: u64,
    /// What the cap leaves for new sessions; UINT64_MAX without a cap.
    pub available_bytes: u64,
}

/// `kvedge_message`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ChatMessage {
    pub role: *const c_char,
    pub content: *const c_char,
}

pub(crate) fn model(h: *const KvedgeModel) -> FfiResult<std::sync::Arc<Model>> {
    MODELS.get(from_handle(h))
}

/// Defaults: GPU, best adapter, no cap, no progress callback.
#[no_mangle]
pub extern "C" fn kvedge_model_default_params() -> ModelParams {
    ModelParams {
        device: KVEDGE_DEVICE_GPU,
        adapter: -1,
        max_gpu_bytes: 0,
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        kv_gates: std::ptr::null(),
    }
}

fn load_options(p: &ModelParams) -> FfiResult<LoadOptions> {
    let device = match p.device {
        KVEDGE_DEVICE_GPU => Device::Gpu,
        KVEDGE_DEVICE_CPU => Device::Cpu,
        d => {
            return Err(FfiError::invalid(format!(
                "device {d}: expected KVEDGE_DEVICE_GPU (0) or KVEDGE_DEVICE_CPU (1)"
            )))
        }
    };
    let adapter = match p.adapter {
        -1 => None,
        a if a >= 0 => Some(a as usize),
        a => {
            return Err(FfiError::invalid(format!(
                "adapter {a}: expected -1 (best) or an index from `kvedge devices`"
            )))
        }
    };
    let gates = if p.kv_gates.is_null() {
        None
    } else {
        // SAFETY: the caller passes NULL or a NUL-terminated string (kvedge.h).
        Some(unsafe { str_arg(p.kv_gates, "kv_gates") }?.into())
    };
    let mut opts = LoadOptions {
        device,
        max_gpu_bytes: (p.max_gpu_bytes > 0).then_some(p.max_gpu_bytes),
        gates,
        ..LoadOptions::default()
    };
    opts.gpu.adapter = adapter;
    Ok(opts)
}

/// Load a GGUF model. `params` NULL: defaults. On success `*model` is a new handle (free
/// it with `kvedge_model_free`); on failure `*model` is NULL.
///
/// # Safety
/// `path` is a NUL-terminated string; `params` NULL or valid; `model` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_model_load(
    path: *const c_char,
    params: *const ModelParams,
    model: *mut *mut KvedgeModel,
) -> i32 {
    guard(|| {
        let out = out_arg(model, "model (the output handle)")?;
        *out = std::ptr::null_mut();
        let path = str_arg(path, "path")?;
        let p = params
            .as_ref()
            .copied()
            .unwrap_or_else(|| kvedge_model_default_params());
        let opts = load_options(&p)?;
        let mut progress = |done: usize, total: usize| {
            if let Some(cb) = p.progress {
                cb(done as u64, total as u64, p.progress_user_data);
            }
        };
        let m = Model::load(path, &opts, &mut progress)?;
        *out = to_handle(MODELS.insert(m));
        Ok(())
    })
}

/// Free a model handle. NULL is a no-op; a handle freed already gives
/// KVEDGE_ERR_INVALID_HANDLE. Sessions made from it stay usable.
#[no_mangle]
pub extern "C" fn kvedge_model_free(model: *mut KvedgeModel) -> i32 {
    guard(|| {
        if !model.is_null() {
            MODELS.remove(from_handle(model))?;
        }
        Ok(())
    })
}

/// What the model is.
///
/// # Safety
/// `info` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_model_info_get(
    model: *const KvedgeModel,
    info: *mut ModelInfo,
) -> i32 {
    guard(|| {
        let out = out_arg(info, "info")?;
        let m = self::model(model)?;
        let hp = m.hparams();
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        *out = ModelInfo {
            n_vocab: n(hp.n_vocab),
            n_ctx_train: n(hp.n_ctx_train),
            n_layers: n(hp.n_layers),
            n_heads: n(hp.n_heads),
            n_kv_heads: n(hp.n_kv_heads),
            head_dim: n(hp.head_dim),
            has_chat_template: m.has_chat_template(),
        };
        Ok(())
    })
}

/// GPU memory of the model's weights and live sessions, against its cap.
///
/// # Safety
/// `memory` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_model_memory(
    model: *const KvedgeModel,
    memory: *mut Memory,
) -> i32 {
    guard(|| {
        let out = out_arg(memory, "memory")?;
        let r = self::model(model)?.memory();
        *out = Memory {
            cap_bytes: r.cap.unwrap_or(0),
            weights_bytes: r.weights,
            sessions_bytes: r.sessions,
            available_bytes: r.available().unwrap_or(u64::MAX),
        };
        Ok(())
    })
}

/// Tokenize `text`. `add_bos`: begin with BOS when the vocabulary asks for one;
/// `parse_special`: special-token text (`<|im_start|>`) becomes its token. Writes at most
/// `capacity` ids to `tokens` (NULL when `capacity` is 0) and the full count to
/// `*n_tokens`; when they do not fit, returns KVEDGE_ERR_BUFFER_TOO_SMALL (call again
/// with `*n_tokens` of room).
///
/// # Safety
/// `text` is a NUL-terminated string; `tokens` valid for `capacity` writes; `n_tokens`
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_tokenize(
    model: *const KvedgeModel,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    tokens: *mut u32,
    capacity: usize,
    n_tokens: *mut usize,
) -> i32 {
    guard(|| {
        let n_out = out_arg(n_tokens, "n_tokens")?;
        *n_out = 0;
        let m = self::model(model)?;
        let text = str_arg(text, "text")?;
        let ids = m.tokenizer().encode(text, add_bos, parse_special)?;
        *n_out = ids.len();
        if ids.len() > capacity {
            return Err(FfiError::new(
                Status::BufferTooSmall,
                format!(
                    "the text is {} tokens, the buffer holds {capacity}",
                    ids.len()
                ),
            ));
        }
        if !ids.is_empty() {
            if tokens.is_null() {
                return Err(FfiError::new(Status::NullPointer, "tokens is NULL"));
            }
            std::slice::from_raw_parts_mut(tokens, ids.len()).copy_from_slice(&ids);
        }
        Ok(())
    })
}

/// The text of `n_tokens` ids (`show_special`: include the text of special tokens). On
/// success `*text` is a new string: free it with `kvedge_string_free`. An id outside the
/// vocabulary is KVEDGE_ERR_INVALID_ARGUMENT; bytes that are not UTF-8 (a sequence cut
/// inside a character) become U+FFFD.
///
/// # Safety
/// `tokens` valid for `n_tokens` reads (NULL when 0); `text` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_detokenize(
    model: *const KvedgeModel,
    tokens: *const u32,
    n_tokens: usize,
    show_special: bool,
    text: *mut *mut c_char,
) -> i32 {
    guard(|| {
        let out = out_arg(text, "text")?;
        *out = std::ptr::null_mut();
        let m = self::model(model)?;
        let ids: &[u32] = if n_tokens == 0 {
            &[]
        } else if tokens.is_null() {
            return Err(FfiError::new(Status::NullPointer, "tokens is NULL"));
        } else {
            std::slice::from_raw_parts(tokens, n_tokens)
        };
        let n_vocab = m.tokenizer().n_vocab();
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= n_vocab)
        {
            return Err(FfiError::invalid(format!(
                "token {i} is id {id}: the vocabulary has {n_vocab} tokens"
            )));
        }
        let s = m.tokenizer().decode(ids, show_special)?;
        *out = owned_c_string(&s);
        Ok(())
    })
}

/// Render `messages` with the model's chat template (`add_generation_prompt`: end with
/// the assistant's header). On success `*text` is a new string: free it with
/// `kvedge_string_free`. A model without a template is KVEDGE_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `messages` valid for `n_messages` reads, each with NUL-terminated `role` and
/// `content`; `text` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_chat_apply(
    model: *const KvedgeModel,
    messages: *const ChatMessage,
    n_messages: usize,
    add_generation_prompt: bool,
    text: *mut *mut c_char,
) -> i32 {
    guard(|| {
        let out = out_arg(text, "text")?;
        *out = std::ptr::null_mut();
        let m = self::model(model)?;
        let template = m.chat_template().ok_or_else(|| {
            FfiError::invalid("this model has no chat template (tokenizer.chat_template)")
        })?;
        let raw: &[ChatMessage] = if n_messages == 0 {
            &[]
        } else if messages.is_null() {
            return Err(FfiError::new(Status::NullPointer, "messages is NULL"));
        } else {
            std::slice::from_raw_parts(messages, n_messages)
        };
        let mut msgs = Vec::with_capacity(raw.len());
        for (i, msg) in raw.iter().enumerate() {
            let role = str_arg(msg.role, &format!("messages[{i}].role"))?;
            let content = str_arg(msg.content, &format!("messages[{i}].content"))?;
            msgs.push(Message::new(role, content));
        }
        *out = owned_c_string(&template.apply(&msgs, add_generation_prompt)?);
        Ok(())
    })
}

/// Free a string kvedge returned. NULL is a no-op.
///
/// # Safety
/// `s` is NULL or a string from kvedge not freed yet.
#[no_mangle]
pub unsafe extern "C" fn kvedge_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}
