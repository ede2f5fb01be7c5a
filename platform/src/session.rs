//! Sessions: one conversation each, with its own KV cache configured from
//! `kvedge_session_params` (context, budget, policy, storage types, TidalDecode, fitting a
//! memory cap). Generation streams pieces of text to a callback that can stop it;
//! `kvedge_session_cancel` stops it from another thread. A session runs one call at a
//! time: a second thread calling in while it generates gets KVEDGE_ERR_BUSY (only
//! `kvedge_session_cancel`, `kvedge_session_stats` and `kvedge_session_free` never wait or
//! fail for that reason). Different sessions, of one model or several, run in parallel.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use kvedge_models::SessionConfig;
use kvedge_runtime::kv::{KvBudget, KvOptions, KvPolicy, KvType, TidalOptions};
use kvedge_runtime::sample::SamplingOptions;
use kvedge_runtime::session::{FinishReason, GenerateOptions, Session};

use crate::handles::{from_handle, to_handle, Registry};
use crate::model::{model, KvedgeModel};
use crate::status::{guard, out_arg, str_arg, FfiError, FfiResult, Status};

/// Opaque session handle (`kvedge_session *`).
pub enum KvedgeSession {}

pub const KVEDGE_KV_POLICY_FULL: i32 = 0;
pub const KVEDGE_KV_POLICY_WINDOW: i32 = 1;
pub const KVEDGE_KV_POLICY_H2O: i32 = 2;
pub const KVEDGE_KV_POLICY_NACL: i32 = 3;
pub const KVEDGE_KV_POLICY_GATE: i32 = 4;

pub const KVEDGE_KV_TYPE_F16: i32 = 0;
pub const KVEDGE_KV_TYPE_Q8: i32 = 1;
pub const KVEDGE_KV_TYPE_Q4: i32 = 2;
/// 4-bit per channel over blocks of 32 slots (KIVI); for K.
pub const KVEDGE_KV_TYPE_Q4C: i32 = 3;

pub const KVEDGE_FINISH_NONE: i32 = -1;
pub const KVEDGE_FINISH_END_OF_GENERATION: i32 = 0;
pub const KVEDGE_FINISH_MAX_TOKENS: i32 = 1;
pub const KVEDGE_FINISH_STOP_STRING: i32 = 2;
pub const KVEDGE_FINISH_CONTEXT_FULL: i32 = 3;
pub const KVEDGE_FINISH_CALLBACK: i32 = 4;
pub const KVEDGE_FINISH_CANCELLED: i32 = 5;

/// `kvedge_session_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SessionParams {
    pub context: u32,
    pub chunk: u32,
    pub kv_policy: i32,
    pub kv_budget_tokens: u64,
    pub kv_budget_bytes: u64,
    pub kv_sinks: u32,
    pub kv_seed: u64,
    pub kv_type_k: i32,
    pub kv_type_v: i32,
    pub kv_rotate: i32,
    pub kv_pool: i32,
    pub tidal_k: u32,
    pub tidal_select_layer: u32,
    pub tidal_reselect_layer: u32,
    pub fit_memory: bool,
}

/// `kvedge_generate_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenerateParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: u32,
    pub seed: u64,
    pub stop: *const *const c_char,
    pub n_stop: usize,
}

/// `kvedge_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SessionStats {
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub context_used: u64,
    pub context_size: u64,
    pub kv_bytes: u64,
    pub kv_slots: u64,
    pub kv_slots_used: u64,
    pub kv_evicted_tokens: u64,
    pub kv_evictions: u64,
    pub last_finish: i32,
}

/// `kvedge_token_callback`: a piece of text (NUL-terminated, `len` bytes); nonzero stops.
pub type TokenCallback = Option<unsafe extern "C" fn(*const c_char, usize, *mut c_void) -> i32>;

struct SessionEntry {
    session: Mutex<Session>,
    cancel: AtomicBool,
    /// What `kvedge_session_stats` reads: refreshed after every token, never waits.
    stats: Mutex<SessionStats>,
}

static SESSIONS: Registry<SessionEntry> = Registry::new("session");

fn snapshot(session_stats: &kvedge_runtime::session::Stats, last_finish: i32) -> SessionStats {
    let s = session_stats;
    SessionStats {
        prompt_tokens: s.prompt_tokens as u64,
        generated_tokens: s.generated_tokens as u64,
        prefill_seconds: s.prefill_time.as_secs_f64(),
        decode_seconds: s.decode_time.as_secs_f64(),
        prefill_tokens_per_s: s.prefill_tokens_per_s(),
        decode_tokens_per_s: s.decode_tokens_per_s(),
        context_used: s.context_used as u64,
        context_size: s.context_size as u64,
        kv_bytes: s.kv_bytes,
        kv_slots: s.kv.slots as u64,
        kv_slots_used: s.kv.used as u64,
        kv_evicted_tokens: s.kv.evicted,
        kv_evictions: s.kv.evictions,
        last_finish,
    }
}

fn finish_code(r: FinishReason) -> i32 {
    match r {
        FinishReason::EndOfGeneration => KVEDGE_FINISH_END_OF_GENERATION,
        FinishReason::MaxTokens => KVEDGE_FINISH_MAX_TOKENS,
        FinishReason::StopString => KVEDGE_FINISH_STOP_STRING,
        FinishReason::ContextFull => KVEDGE_FINISH_CONTEXT_FULL,
    }
}

fn store(entry: &SessionEntry, stats: SessionStats) {
    *entry.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
}

/// Defaults: the model's context (at most 4096), chunks of 512, the full f16 cache,
/// dense decode.
#[no_mangle]
pub extern "C" fn kvedge_session_default_params() -> SessionParams {
    let kv = KvOptions::default();
    SessionParams {
        context: 0,
        chunk: SessionConfig::default().chunk as u32,
        kv_policy: KVEDGE_KV_POLICY_FULL,
        kv_budget_tokens: 0,
        kv_budget_bytes: 0,
        kv_sinks: kv.sinks as u32,
        kv_seed: kv.seed,
        kv_type_k: KVEDGE_KV_TYPE_F16,
        kv_type_v: KVEDGE_KV_TYPE_F16,
        kv_rotate: -1,
        kv_pool: -1,
        tidal_k: 0,
        tidal_select_layer: 0,
        tidal_reselect_layer: 0,
        fit_memory: false,
    }
}

fn kv_type(v: i32, what: &str) -> FfiResult<KvType> {
    match v {
        KVEDGE_KV_TYPE_F16 => Ok(KvType::F16),
        KVEDGE_KV_TYPE_Q8 => Ok(KvType::Q8),
        KVEDGE_KV_TYPE_Q4 => Ok(KvType::Q4),
        KVEDGE_KV_TYPE_Q4C => Ok(KvType::Q4C),
        v => Err(FfiError::invalid(format!(
            "{what} {v}: expected KVEDGE_KV_TYPE_F16 (0), _Q8 (1), _Q4 (2) or _Q4C (3)"
        ))),
    }
}

fn session_config(p: &SessionParams) -> FfiResult<SessionConfig> {
    let policy = match p.kv_policy {
        KVEDGE_KV_POLICY_FULL => KvPolicy::Full,
        KVEDGE_KV_POLICY_WINDOW => KvPolicy::Window,
        KVEDGE_KV_POLICY_H2O => KvPolicy::H2o,
        KVEDGE_KV_POLICY_NACL => KvPolicy::Nacl,
        KVEDGE_KV_POLICY_GATE => KvPolicy::Gate,
        v => {
            return Err(FfiError::invalid(format!(
            "kv_policy {v}: expected KVEDGE_KV_POLICY_FULL (0), _WINDOW (1), _H2O (2), _NACL (3) or _GATE (4)"
        )))
        }
    };
    let budget = match (p.kv_budget_tokens, p.kv_budget_bytes) {
        (0, 0) => None,
        (t, 0) => Some(KvBudget::Tokens(usize::try_from(t).map_err(|_| {
            FfiError::invalid(format!("kv_budget_tokens {t} is too large"))
        })?)),
        (0, b) => Some(KvBudget::Bytes(b)),
        (t, b) => {
            return Err(FfiError::invalid(format!(
                "kv_budget_tokens ({t}) and kv_budget_bytes ({b}) are both set: give one"
            )))
        }
    };
    let hadamard = match p.kv_rotate {
        -1 => None,
        0 => Some(false),
        1 => Some(true),
        v => {
            return Err(FfiError::invalid(format!(
                "kv_rotate {v}: expected -1 (auto), 0 (off) or 1 (on)"
            )))
        }
    };
    let pool = match p.kv_pool {
        -1 => None,
        r if r >= 0 => Some(r as usize),
        r => {
            return Err(FfiError::invalid(format!(
                "kv_pool {r}: expected -1 (the policy's default) or a radius >= 0"
            )))
        }
    };
    let tidal = match (p.tidal_k, p.tidal_select_layer, p.tidal_reselect_layer) {
        (0, 0, 0) => None,
        (0, s, r) => {
            return Err(FfiError::invalid(format!(
                "tidal layers ({s}, {r}) are set but tidal_k is 0: set tidal_k to use TidalDecode"
            )))
        }
        (k, 0, 0) => Some(TidalOptions {
            k: k as usize,
            layers: None,
        }),
        (k, s, r) => Some(TidalOptions {
            k: k as usize,
            layers: Some((s as usize, r as usize)),
        }),
    };
    let chunk = if p.chunk == 0 {
        SessionConfig::default().chunk
    } else {
        p.chunk as usize
    };
    Ok(SessionConfig {
        context: p.context as usize,
        chunk,
        kv: KvOptions {
            budget,
            policy,
            sinks: p.kv_sinks as usize,
            seed: p.kv_seed,
            k_type: kv_type(p.kv_type_k, "kv_type_k")?,
            v_type: kv_type(p.kv_type_v, "kv_type_v")?,
            hadamard,
            tidal,
            pool,
            recent_pct: None,
        },
        fit_memory: p.fit_memory,
    })
}

/// A new session of `model` (`params` NULL: defaults). On success `*session` is a new
/// handle (free it with `kvedge_session_free`); on failure NULL.
///
/// # Safety
/// `params` NULL or valid; `session` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_session_create(
    model: *const KvedgeModel,
    params: *const SessionParams,
    session: *mut *mut KvedgeSession,
) -> i32 {
    guard(|| {
        let out = out_arg(session, "session (the output handle)")?;
        *out = std::ptr::null_mut();
        let m = self::model(model)?;
        let p = params
            .as_ref()
            .copied()
            .unwrap_or_else(|| kvedge_session_default_params());
        let s = m.session(&session_config(&p)?)?;
        let stats = snapshot(&s.stats(), KVEDGE_FINISH_NONE);
        *out = to_handle(SESSIONS.insert(SessionEntry {
            session: Mutex::new(s),
            cancel: AtomicBool::new(false),
            stats: Mutex::new(stats),
        }));
        Ok(())
    })
}

/// Free a session handle. NULL is a no-op; a handle freed already gives
/// KVEDGE_ERR_INVALID_HANDLE. Freeing a session while another thread generates with it
/// cancels that generation; the memory goes when it returns.
#[no_mangle]
pub extern "C" fn kvedge_session_free(session: *mut KvedgeSession) -> i32 {
    guard(|| {
        if !session.is_null() {
            let entry = SESSIONS.remove(from_handle(session))?;
            entry.cancel.store(true, Ordering::SeqCst);
        }
        Ok(())
    })
}

fn entry(session: *const KvedgeSession) -> FfiResult<Arc<SessionEntry>> {
    SESSIONS.get(from_handle(session))
}

fn lock(entry: &SessionEntry) -> FfiResult<std::sync::MutexGuard<'_, Session>> {
    entry.session.try_lock().map_err(|e| match e {
        TryLockError::WouldBlock => FfiError::new(
            Status::Busy,
            "the session is running a call on another thread (one call at a time per session)",
        ),
        TryLockError::Poisoned(_) => FfiError::new(
            Status::Panic,
            "an earlier call on this session failed inside kvedge; free the session",
        ),
    })
}

/// Forget the conversation (the KV cache empties; counters are kept).
#[no_mangle]
pub extern "C" fn kvedge_session_reset(session: *mut KvedgeSession) -> i32 {
    guard(|| {
        let e = entry(session)?;
        let mut s = lock(&e)?;
        s.reset();
        store(&e, snapshot(&s.stats(), KVEDGE_FINISH_NONE));
        Ok(())
    })
}

/// Stop the generation running on this session (from any thread): it returns
/// KVEDGE_OK with finish reason KVEDGE_FINISH_CANCELLED before its next token. Does
/// nothing when no generation is running (the next one is not affected).
#[no_mangle]
pub extern "C" fn kvedge_session_cancel(session: *mut KvedgeSession) -> i32 {
    guard(|| {
        entry(session)?.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// The session's counters (any thread, never waits: during a generation, as of its
/// last token).
///
/// # Safety
/// `stats` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn kvedge_session_stats(
    session: *const KvedgeSession,
    stats: *mut SessionStats,
) -> i32 {
    guard(|| {
        let out = out_arg(stats, "stats")?;
        *out = *entry(session)?
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(())
    })
}

/// Defaults: 256 tokens, the runtime's sampling defaults (temperature 0.8, top-k 40,
/// top-p 0.95, min-p 0.05), no stop strings.
#[no_mangle]
pub extern "C" fn kvedge_generate_default_params() -> GenerateParams {
    let g = GenerateOptions::default();
    let s = &g.sampling;
    GenerateParams {
        max_tokens: g.max_tokens as u32,
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as u32,
        seed: s.seed,
        stop: std::ptr::null(),
        n_stop: 0,
    }
}

unsafe fn generate_options(p: &GenerateParams) -> FfiResult<GenerateOptions> {
    let mut stop = Vec::with_capacity(p.n_stop);
    if p.n_stop > 0 {
        if p.stop.is_null() {
            return Err(FfiError::new(
                Status::NullPointer,
                format!("stop is NULL with n_stop = {}", p.n_stop),
            ));
        }
        for (i, &s) in std::slice::from_raw_parts(p.stop, p.n_stop)
            .iter()
            .enumerate()
        {
            stop.push(str_arg(s, &format!("stop[{i}]"))?.to_string());
        }
    }
    Ok(GenerateOptions {
        max_tokens: p.max_tokens as usize,
        sampling: SamplingOptions {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: p.repeat_last_n as usize,
            seed: p.seed,
        },
        stop,
    })
}

/// The body of `kvedge_generate` and `kvedge_chat`.
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    session: *mut KvedgeSession,
    text: *const c_char,
    what: &str,
    params: *const GenerateParams,
    callback: TokenCallback,
    user_data: *mut c_void,
    finish: *mut i32,
    chat: bool,
) -> i32 {
    guard(|| {
        if let Some(f) = finish.as_mut() {
            *f = KVEDGE_FINISH_NONE;
        }
        let e = entry(session)?;
        let text = str_arg(text, what)?;
        let p = params
            .as_ref()
            .copied()
            .unwrap_or_else(|| kvedge_generate_default_params());
        let opts = generate_options(&p)?;
        let mut s = lock(&e)?;
        e.cancel.store(false, Ordering::SeqCst);
        let mut gen = if chat {
            s.chat(text, &opts)?
        } else {
            s.generate(text, &opts)?
        };
        let mut stopped = None;
        let mut piece_c = Vec::new();
        loop {
            if e.cancel.load(Ordering::SeqCst) {
                stopped = Some(KVEDGE_FINISH_CANCELLED);
                break;
            }
            let piece = match gen.next() {
                None => break,
                Some(r) => r?,
            };
            store(&e, snapshot(&gen.stats(), KVEDGE_FINISH_NONE));
            if piece.is_empty() {
                continue;
            }
            if let Some(cb) = callback {
                piece_c.clear();
                piece_c.extend_from_slice(piece.as_bytes());
                piece_c.push(0);
                if cb(piece_c.as_ptr().cast(), piece.len(), user_data) != 0 {
                    stopped = Some(KVEDGE_FINISH_CALLBACK);
                    break;
                }
            }
        }
        // A chat reply stopped early still belongs to the conversation.
        gen.finish_turn();
        let stats = s.stats();
        let code = stopped.unwrap_or_else(|| {
            stats
                .last_finish
                .map(finish_code)
                .unwrap_or(KVEDGE_FINISH_NONE)
        });
        store(&e, snapshot(&stats, code));
        if let Some(f) = finish.as_mut() {
            *f = code;
        }
        Ok(())
    })
}

/// Continue the session's text with `prompt` (raw text, special tokens parsed; BOS first
/// when the session is empty) and generate. Each piece of text goes to `callback` (may be
/// NULL) as it is made; a nonzero return stops the generation (finish reason
/// KVEDGE_FINISH_CALLBACK). `params` NULL: defaults. `*finish` (may be NULL) receives why
/// it ended. Blocks until then.
///
/// # Safety
/// `prompt` is a NUL-terminated string; `params` NULL or valid (with `n_stop` valid
/// strings); `finish` NULL or valid for a write; `callback` safe to call with
/// `user_data` on this thread.
#[no_mangle]
pub unsafe extern "C" fn kvedge_generate(
    session: *mut KvedgeSession,
    prompt: *const c_char,
    params: *const GenerateParams,
    callback: TokenCallback,
    user_data: *mut c_void,
    finish: *mut i32,
) -> i32 {
    run(
        session, prompt, "prompt", params, callback, user_data, finish, false,
    )
}

/// Add a user message to the session's conversation (rendered with the model's chat
/// template; earlier turns stay in the KV cache) and generate the assistant's reply, as
/// `kvedge_generate` does. A model without a template is KVEDGE_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// As `kvedge_generate`, with `message` for `prompt`.
#[no_mangle]
pub unsafe extern "C" fn kvedge_chat(
    session: *mut KvedgeSession,
    message: *const c_char,
    params: *const GenerateParams,
    callback: TokenCallback,
    user_data: *mut c_void,
    finish: *mut i32,
) -> i32 {
    run(
        session, message, "message", params, callback, user_data, finish, true,
    )
}
