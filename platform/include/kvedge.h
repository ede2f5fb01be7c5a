/* kvedge C ABI: load a GGUF model, make sessions with a compressed KV cache, generate.
 * Every function here is exported by libkvedge_ffi (cdylib and staticlib).
 *
 * Status: fallible functions return int32_t: KVEDGE_OK (0) or a negative kvedge_status;
 * kvedge_last_error() then gives the message (thread-local).
 * Handles: kvedge_model * and kvedge_session * are opaque tokens. kvedge checks each one
 * it is given: a freed handle gives KVEDGE_ERR_INVALID_HANDLE (handles are never reused),
 * NULL gives KVEDGE_ERR_NULL_POINTER. Nothing panics or aborts across this boundary.
 * Ownership: strings returned through char ** are the caller's; free them with
 * kvedge_string_free. kvedge_version, kvedge_status_name and kvedge_last_error return
 * strings the caller must not free.
 * Threads: a model may be used by any number of threads at once, and may be freed before
 * its sessions (they keep what they need). A session runs one call at a time: a call
 * made while another thread is inside one on the same session returns KVEDGE_ERR_BUSY,
 * except kvedge_session_cancel, kvedge_session_stats and kvedge_session_free, which any
 * thread may call at any time. Separate sessions run in parallel.
 * Callbacks run on the calling thread, inside the call that takes them. */
#ifndef KVEDGE_H
#define KVEDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ---------------------------------------------------------------------- */

typedef enum kvedge_status {
    KVEDGE_OK = 0,
    KVEDGE_ERR_NULL_POINTER = -1,     /* a required pointer argument was NULL */
    KVEDGE_ERR_INVALID_UTF8 = -2,     /* a string argument was not UTF-8 */
    KVEDGE_ERR_INVALID_ARGUMENT = -3, /* out of range or inconsistent: see the message */
    KVEDGE_ERR_INVALID_HANDLE = -4,   /* freed, or not made by kvedge */
    KVEDGE_ERR_BUSY = -5,             /* the session is in a call on another thread */
    KVEDGE_ERR_MODEL = -6,            /* not a model kvedge can run (I/O, GGUF, tensors) */
    KVEDGE_ERR_DEVICE = -7,           /* no usable GPU adapter, or the GPU failed */
    KVEDGE_ERR_OUT_OF_MEMORY = -8,    /* the memory cap given at load does not hold it */
    KVEDGE_ERR_BUFFER_TOO_SMALL = -9, /* the needed size was written; call again */
    KVEDGE_ERR_RUNTIME = -10,         /* tokenizer, template, sampling failures */
    KVEDGE_ERR_PANIC = -11            /* a bug inside kvedge, caught; free the handle */
} kvedge_status;

/* The library version, NUL-terminated, static: do not free. Any thread. */
const char *kvedge_version(void);

/* The message of this thread's last kvedge call, "" when it succeeded. Owned by kvedge,
 * valid until the next kvedge call on this thread. */
const char *kvedge_last_error(void);

/* "KVEDGE_ERR_NULL_POINTER" for -1 and so on; "unknown" otherwise. Static. */
const char *kvedge_status_name(int32_t status);

/* Free a string kvedge returned through a char ** argument. NULL is a no-op. */
void kvedge_string_free(char *s);

/* ---- models ---------------------------------------------------------------------- */

typedef struct kvedge_model kvedge_model;

enum { KVEDGE_DEVICE_GPU = 0, KVEDGE_DEVICE_CPU = 1 };

/* Weight tensors uploaded so far, and in all. */
typedef void (*kvedge_progress_callback)(uint64_t done, uint64_t total, void *user_data);

typedef struct kvedge_model_params {
    int32_t device;        /* KVEDGE_DEVICE_GPU (default) or KVEDGE_DEVICE_CPU */
    int32_t adapter;       /* GPU adapter index as `kvedge devices` lists them; -1: best */
    uint64_t max_gpu_bytes; /* cap on the GPU memory of the weights and all sessions
                               together (bytes of storage buffers); 0: none. GPU only. */
    kvedge_progress_callback progress; /* may be NULL */
    void *progress_user_data;
    const char *kv_gates;  /* Attention-Gate file (tools/train-gates) for
                              KVEDGE_KV_POLICY_GATE; NULL: none (or the model's own) */
} kvedge_model_params;

kvedge_model_params kvedge_model_default_params(void);

/* Load a GGUF file. params NULL: defaults. On success *model is a new handle (free it
 * with kvedge_model_free), on failure NULL. Weights over the cap: KVEDGE_ERR_OUT_OF_MEMORY. */
int32_t kvedge_model_load(const char *path, const kvedge_model_params *params,
                          kvedge_model **model);

/* NULL is a no-op; a freed handle gives KVEDGE_ERR_INVALID_HANDLE. */
int32_t kvedge_model_free(kvedge_model *model);

typedef struct kvedge_model_info {
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    bool has_chat_template;
} kvedge_model_info;

int32_t kvedge_model_info_get(const kvedge_model *model, kvedge_model_info *info);

typedef struct kvedge_memory {
    uint64_t cap_bytes;       /* the cap given at load; 0: none */
    uint64_t weights_bytes;   /* measured at upload */
    uint64_t sessions_bytes;  /* live sessions, measured when each was made */
    uint64_t available_bytes; /* what the cap leaves; UINT64_MAX without a cap */
} kvedge_memory;

/* GPU memory of the model and its live sessions, against its cap. */
int32_t kvedge_model_memory(const kvedge_model *model, kvedge_memory *memory);

/* Tokenize text (add_bos: begin with BOS when the vocabulary asks for one; parse_special:
 * special-token text becomes its token). Writes at most capacity ids (tokens may be NULL
 * when capacity is 0) and the full count to *n_tokens; when they do not fit returns
 * KVEDGE_ERR_BUFFER_TOO_SMALL: call again with *n_tokens of room. */
int32_t kvedge_tokenize(const kvedge_model *model, const char *text, bool add_bos,
                        bool parse_special, uint32_t *tokens, size_t capacity,
                        size_t *n_tokens);

/* The text of n_tokens ids (show_special: include special tokens' text). *text: a new
 * string, free with kvedge_string_free. An id outside the vocabulary:
 * KVEDGE_ERR_INVALID_ARGUMENT. Bytes that are not UTF-8 become U+FFFD. */
int32_t kvedge_detokenize(const kvedge_model *model, const uint32_t *tokens,
                          size_t n_tokens, bool show_special, char **text);

typedef struct kvedge_message {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} kvedge_message;

/* Render messages with the model's chat template (add_generation_prompt: end with the
 * assistant's header). *text: a new string, free with kvedge_string_free. No template in
 * the model: KVEDGE_ERR_INVALID_ARGUMENT. */
int32_t kvedge_chat_apply(const kvedge_model *model, const kvedge_message *messages,
                          size_t n_messages, bool add_generation_prompt, char **text);

/* ---- sessions -------------------------------------------------------------------- */

typedef struct kvedge_session kvedge_session;

enum {
    KVEDGE_KV_POLICY_FULL = 0,   /* keep everything; the context bounds the session */
    KVEDGE_KV_POLICY_WINDOW = 1, /* StreamingLLM: sinks + recent tokens */
    KVEDGE_KV_POLICY_H2O = 2,    /* heavy hitters by accumulated attention + recent */
    KVEDGE_KV_POLICY_NACL = 3,   /* NACL: one-shot eviction at prefill by proxy queries */
    KVEDGE_KV_POLICY_GATE = 4    /* Attention-Gate: learned scores (needs kv_gates) */
};

/* Q4C: 4 bits per channel over blocks of 32 slots (KIVI), meant for K with V in Q4. */
enum { KVEDGE_KV_TYPE_F16 = 0, KVEDGE_KV_TYPE_Q8 = 1, KVEDGE_KV_TYPE_Q4 = 2, KVEDGE_KV_TYPE_Q4C = 3 };

typedef struct kvedge_session_params {
    uint32_t context;          /* positions; 0: min(training context, 4096) */
    uint32_t chunk;            /* prefill chunk in tokens; 0: 512 */
    int32_t kv_policy;         /* KVEDGE_KV_POLICY_*; a budget needs one that evicts */
    uint64_t kv_budget_tokens; /* KV slots per layer and KV head; 0: none */
    uint64_t kv_budget_bytes;  /* bytes of the whole KV cache; 0: none (give one budget) */
    uint32_t kv_sinks;         /* attention-sink slots every policy keeps */
    uint64_t kv_seed;          /* seed of NACL's random sample */
    int32_t kv_type_k;         /* KVEDGE_KV_TYPE_* of K */
    int32_t kv_type_v;         /* KVEDGE_KV_TYPE_* of V */
    int32_t kv_rotate;         /* Hadamard rotation: -1 auto (on when quantized), 0, 1 */
    int32_t kv_pool;           /* score max-pool radius; -1: the policy's default */
    uint32_t tidal_k;          /* TidalDecode slots per KV head; 0: dense decode */
    uint32_t tidal_select_layer;   /* with tidal_reselect_layer; both 0: defaults */
    uint32_t tidal_reselect_layer; /* (2 and n_layers / 2) */
    bool fit_memory;           /* under the model's memory cap, size the KV cache to what
                                  the cap leaves: the budget (leave both budgets 0) with
                                  an evicting policy, the context with the full cache.
                                  kvedge_session_stats shows what was chosen. */
} kvedge_session_params;

/* The model's context (at most 4096), chunks of 512, full f16 cache, dense decode. */
kvedge_session_params kvedge_session_default_params(void);

/* A new session with its own KV cache. params NULL: defaults. On success *session is a
 * new handle (free it with kvedge_session_free), on failure NULL. Over the model's memory
 * cap: KVEDGE_ERR_OUT_OF_MEMORY. */
int32_t kvedge_session_create(const kvedge_model *model, const kvedge_session_params *params,
                              kvedge_session **session);

/* NULL is a no-op; a freed handle gives KVEDGE_ERR_INVALID_HANDLE. Freeing a session
 * while another thread generates with it cancels that generation; the memory goes when
 * that call returns. Any thread. */
int32_t kvedge_session_free(kvedge_session *session);

/* Forget the conversation (the KV cache empties; the counters stay). */
int32_t kvedge_session_reset(kvedge_session *session);

/* Stop the generation running on this session before its next token; it returns
 * KVEDGE_OK with finish reason KVEDGE_FINISH_CANCELLED. A session that is not generating
 * is not affected (a later generation runs normally). Any thread. */
int32_t kvedge_session_cancel(kvedge_session *session);

enum {
    KVEDGE_FINISH_NONE = -1,
    KVEDGE_FINISH_END_OF_GENERATION = 0, /* the model ended its turn */
    KVEDGE_FINISH_MAX_TOKENS = 1,
    KVEDGE_FINISH_STOP_STRING = 2,
    KVEDGE_FINISH_CONTEXT_FULL = 3,      /* full cache only: evicting sessions never fill */
    KVEDGE_FINISH_CALLBACK = 4,          /* the token callback returned nonzero */
    KVEDGE_FINISH_CANCELLED = 5          /* kvedge_session_cancel or kvedge_session_free */
};

typedef struct kvedge_stats {
    uint64_t prompt_tokens;    /* since the session began */
    uint64_t generated_tokens;
    double prefill_seconds;
    double decode_seconds;
    double prefill_tokens_per_s;
    double decode_tokens_per_s;
    uint64_t context_used;     /* positions so far (more than kv_slots_used after eviction) */
    uint64_t context_size;     /* positions the session can reach; 4294967295 when it evicts */
    uint64_t kv_bytes;         /* exact bytes of K and V */
    uint64_t kv_slots;         /* slots per layer and KV head (the budget, or the context) */
    uint64_t kv_slots_used;
    uint64_t kv_evicted_tokens; /* per layer and KV head */
    uint64_t kv_evictions;     /* eviction passes */
    int32_t last_finish;       /* KVEDGE_FINISH_* of the last generation */
} kvedge_stats;

/* The session's counters; never waits (during a generation: as of its last token). */
int32_t kvedge_session_stats(const kvedge_session *session, kvedge_stats *stats);

typedef struct kvedge_generate_params {
    uint32_t max_tokens;
    float temperature;     /* <= 0: greedy */
    uint32_t top_k;        /* 0: all */
    float top_p;           /* 1: all */
    float min_p;           /* 0: all */
    float repeat_penalty;  /* 1: none */
    uint32_t repeat_last_n;
    uint64_t seed;
    const char *const *stop; /* n_stop extra stop strings (may be NULL when n_stop is 0) */
    size_t n_stop;
} kvedge_generate_params;

/* 256 tokens, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no stop strings. */
kvedge_generate_params kvedge_generate_default_params(void);

/* A piece of generated text (len bytes, NUL-terminated, valid during the call only).
 * Return 0 to go on, nonzero to stop (finish reason KVEDGE_FINISH_CALLBACK). */
typedef int32_t (*kvedge_token_callback)(const char *piece, size_t len, void *user_data);

/* Continue the session with prompt (raw text, special tokens parsed, BOS first when the
 * session is empty) and generate, streaming pieces to callback (may be NULL). params NULL:
 * defaults. *finish (may be NULL) gets KVEDGE_FINISH_*. Blocks until the end. A prompt
 * longer than the free context: KVEDGE_ERR_INVALID_ARGUMENT, the session unchanged. */
int32_t kvedge_generate(kvedge_session *session, const char *prompt,
                        const kvedge_generate_params *params, kvedge_token_callback callback,
                        void *user_data, int32_t *finish);

/* Add a user message to the session's conversation (rendered with the chat template;
 * earlier turns stay in the KV cache) and generate the reply as kvedge_generate does.
 * No template in the model: KVEDGE_ERR_INVALID_ARGUMENT. */
int32_t kvedge_chat(kvedge_session *session, const char *message,
                    const kvedge_generate_params *params, kvedge_token_callback callback,
                    void *user_data, int32_t *finish);

#ifdef __cplusplus
}
#endif

#endif /* KVEDGE_H */
