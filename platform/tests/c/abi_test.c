/* The C ABI from C: every documented error path and the threading rules.
 * Usage: abi_test MODEL.gguf cpu|gpu. Prints each failed check; exits 1 if any failed.
 * Built and run by platform/tests/c_abi.rs against the static and the dynamic library. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvedge.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        checks++;                                                                        \
        if (!(cond)) {                                                                   \
            failures++;                                                                  \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__,     \
                    #cond, kvedge_last_error());                                         \
        }                                                                                \
    } while (0)

#define CHECK_STATUS(call, want)                                                         \
    do {                                                                                 \
        int32_t got_ = (call);                                                           \
        checks++;                                                                        \
        if (got_ != (want)) {                                                            \
            failures++;                                                                  \
            fprintf(stderr, "FAIL %s:%d: %s gave %s, expected %s (last error: %s)\n",    \
                    __FILE__, __LINE__, #call, kvedge_status_name(got_),                 \
                    kvedge_status_name(want), kvedge_last_error());                      \
        }                                                                                \
    } while (0)

static int error_mentions(const char *word) { return strstr(kvedge_last_error(), word) != NULL; }

/* ---- generation helpers ---- */

struct collect {
    char text[8192];
    size_t len;
    int pieces;
    int stop_after; /* return nonzero after this many pieces; 0: never */
};

static int32_t collect_piece(const char *piece, size_t len, void *user_data) {
    struct collect *c = user_data;
    if (strlen(piece) != len) return 1; /* the piece must be NUL-terminated at len */
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, piece, len);
        c->len += len;
        c->text[c->len] = 0;
    }
    c->pieces++;
    return c->stop_after > 0 && c->pieces >= c->stop_after;
}

static kvedge_generate_params greedy(uint32_t max_tokens) {
    kvedge_generate_params g = kvedge_generate_default_params();
    g.temperature = 0.0f;
    g.max_tokens = max_tokens;
    return g;
}

/* ---- cancel from another thread ---- */

struct cancel_run {
    kvedge_session *session;
    volatile int first_piece; /* set by the generating thread */
    volatile int go_on;       /* set by the main thread once it has cancelled */
    volatile int done;        /* set by the generating thread when its call returned */
    int32_t status;
    int32_t finish;
    int pieces;
};

static int32_t wait_for_cancel(const char *piece, size_t len, void *user_data) {
    (void)piece;
    (void)len;
    struct cancel_run *r = user_data;
    r->pieces++;
    if (!r->first_piece) {
        __atomic_store_n(&r->first_piece, 1, __ATOMIC_SEQ_CST);
        while (!__atomic_load_n(&r->go_on, __ATOMIC_SEQ_CST)) {
        }
    }
    return 0;
}

static void *generate_until_cancelled(void *arg) {
    struct cancel_run *r = arg;
    kvedge_generate_params g = greedy(100000);
    r->status = kvedge_generate(r->session, "Once upon a time", &g, wait_for_cancel, r, &r->finish);
    __atomic_store_n(&r->done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* ---- two sessions of one model on two threads ---- */

struct parallel_run {
    kvedge_model *model;
    int32_t status;
    struct collect out;
};

static void *generate_in_own_session(void *arg) {
    struct parallel_run *r = arg;
    kvedge_session *s = NULL;
    r->status = kvedge_session_create(r->model, NULL, &s);
    if (r->status != KVEDGE_OK) return NULL;
    kvedge_generate_params g = greedy(12);
    r->status = kvedge_generate(s, "The quick brown fox", &g, collect_piece, &r->out, NULL);
    if (r->status == KVEDGE_OK) r->status = kvedge_session_free(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf cpu|gpu [GATES-OF-ANOTHER-MODEL.gguf]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int on_gpu = strcmp(argv[2], "gpu") == 0;

    CHECK(strlen(kvedge_version()) > 0);

    /* NULL pointers: an error status and a message naming the argument. */
    kvedge_model *model = (kvedge_model *)0x1;
    CHECK_STATUS(kvedge_model_load(NULL, NULL, &model), KVEDGE_ERR_NULL_POINTER);
    CHECK(model == NULL);
    CHECK(error_mentions("path"));
    CHECK_STATUS(kvedge_model_load(path, NULL, NULL), KVEDGE_ERR_NULL_POINTER);
    CHECK_STATUS(kvedge_model_free(NULL), KVEDGE_OK);
    CHECK(strcmp(kvedge_last_error(), "") == 0);
    CHECK_STATUS(kvedge_session_free(NULL), KVEDGE_OK);
    kvedge_string_free(NULL);
    kvedge_session *session = NULL;
    CHECK_STATUS(kvedge_session_create(NULL, NULL, &session), KVEDGE_ERR_NULL_POINTER);
    CHECK_STATUS(kvedge_generate(NULL, "hi", NULL, NULL, NULL, NULL), KVEDGE_ERR_NULL_POINTER);
    CHECK_STATUS(kvedge_session_cancel(NULL), KVEDGE_ERR_NULL_POINTER);
    kvedge_stats stats;
    CHECK_STATUS(kvedge_session_stats(NULL, &stats), KVEDGE_ERR_NULL_POINTER);

    /* Bad files and parameters. */
    CHECK_STATUS(kvedge_model_load("/nonexistent/model.gguf", NULL, &model), KVEDGE_ERR_MODEL);
    CHECK(error_mentions("/nonexistent/model.gguf"));
    CHECK_STATUS(kvedge_model_load("\xff\xfe.gguf", NULL, &model), KVEDGE_ERR_INVALID_UTF8);
    kvedge_model_params mp = kvedge_model_default_params();
    mp.device = 7;
    CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_ERR_INVALID_ARGUMENT);
    CHECK(error_mentions("device 7"));
    mp = kvedge_model_default_params();
    mp.device = KVEDGE_DEVICE_CPU;
    mp.kv_gates = "/nonexistent/gates.gguf";
    CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_ERR_MODEL);
    CHECK(error_mentions("/nonexistent/gates.gguf"));
    if (argc == 4) {
        /* Gates trained for another model are refused, saying for which. */
        mp.kv_gates = argv[3];
        CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_ERR_MODEL);
        CHECK(error_mentions("trained for"));
    }
    CHECK_STATUS(kvedge_status_name(KVEDGE_ERR_BUSY)[0] == 'K' ? KVEDGE_OK : -100, KVEDGE_OK);

    /* Load. */
    mp = kvedge_model_default_params();
    mp.device = on_gpu ? KVEDGE_DEVICE_GPU : KVEDGE_DEVICE_CPU;
    CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_OK);
    if (model == NULL) {
        fprintf(stderr, "cannot go on without the model\n");
        return 1;
    }
    kvedge_model_info info;
    CHECK_STATUS(kvedge_model_info_get(model, NULL), KVEDGE_ERR_NULL_POINTER);
    CHECK_STATUS(kvedge_model_info_get(model, &info), KVEDGE_OK);
    CHECK(info.n_vocab > 0 && info.n_layers > 0 && info.has_chat_template);

    /* Tokenize: size query, round trip, invalid UTF-8, out-of-vocabulary ids. */
    size_t n = 0;
    CHECK_STATUS(kvedge_tokenize(model, "Hello world", false, true, NULL, 0, &n),
                 KVEDGE_ERR_BUFFER_TOO_SMALL);
    CHECK(n > 0);
    uint32_t ids[64];
    size_t n2 = 0;
    CHECK_STATUS(kvedge_tokenize(model, "Hello world", false, true, ids, 64, &n2), KVEDGE_OK);
    CHECK(n2 == n);
    char *text = NULL;
    CHECK_STATUS(kvedge_detokenize(model, ids, n2, false, &text), KVEDGE_OK);
    CHECK(text != NULL && strcmp(text, "Hello world") == 0);
    kvedge_string_free(text);
    CHECK_STATUS(kvedge_tokenize(model, "bad \xc3\x28 text", false, true, ids, 64, &n2),
                 KVEDGE_ERR_INVALID_UTF8);
    CHECK(error_mentions("text"));
    uint32_t bad_id = info.n_vocab;
    CHECK_STATUS(kvedge_detokenize(model, &bad_id, 1, false, &text), KVEDGE_ERR_INVALID_ARGUMENT);
    CHECK(text == NULL);

    /* Chat template. */
    kvedge_message msgs[2] = {{"system", "Be brief."}, {"user", "Hi there"}};
    CHECK_STATUS(kvedge_chat_apply(model, msgs, 2, true, &text), KVEDGE_OK);
    CHECK(text != NULL && strstr(text, "Hi there") != NULL && strstr(text, "Be brief.") != NULL);
    kvedge_string_free(text);
    kvedge_message bad_msg = {"user", "\xff"};
    CHECK_STATUS(kvedge_chat_apply(model, &bad_msg, 1, true, &text), KVEDGE_ERR_INVALID_UTF8);
    CHECK(error_mentions("messages[0].content"));

    /* Session parameters that do not make sense. */
    kvedge_session_params sp = kvedge_session_default_params();
    sp.kv_policy = 9;
    CHECK_STATUS(kvedge_session_create(model, &sp, &session), KVEDGE_ERR_INVALID_ARGUMENT);
    CHECK(session == NULL);
    sp = kvedge_session_default_params();
    sp.kv_budget_tokens = 64;
    CHECK_STATUS(kvedge_session_create(model, &sp, &session), KVEDGE_ERR_INVALID_ARGUMENT);
    CHECK(error_mentions("policy"));
    sp.kv_policy = KVEDGE_KV_POLICY_WINDOW;
    sp.kv_budget_bytes = 4096;
    CHECK_STATUS(kvedge_session_create(model, &sp, &session), KVEDGE_ERR_INVALID_ARGUMENT);
    sp = kvedge_session_default_params();
    sp.fit_memory = true;
    CHECK_STATUS(kvedge_session_create(model, &sp, &session), KVEDGE_ERR_INVALID_ARGUMENT);
    CHECK(error_mentions("cap"));

    /* A generation, a chat turn, a callback that stops, stats. */
    CHECK_STATUS(kvedge_session_create(model, NULL, &session), KVEDGE_OK);
    struct collect out = {0};
    kvedge_generate_params g = greedy(8);
    int32_t finish = -100;
    CHECK_STATUS(kvedge_generate(session, "\xc3\x28", &g, collect_piece, &out, &finish),
                 KVEDGE_ERR_INVALID_UTF8);
    CHECK(finish == KVEDGE_FINISH_NONE);
    CHECK_STATUS(kvedge_generate(session, "Once upon a time", &g, collect_piece, &out, &finish),
                 KVEDGE_OK);
    CHECK(finish == KVEDGE_FINISH_MAX_TOKENS || finish == KVEDGE_FINISH_END_OF_GENERATION);
    CHECK_STATUS(kvedge_session_stats(session, &stats), KVEDGE_OK);
    CHECK(stats.prompt_tokens > 0 && stats.generated_tokens > 0 && stats.generated_tokens <= 8);
    CHECK(stats.kv_bytes > 0 && stats.last_finish == finish);
    CHECK(stats.context_used == stats.prompt_tokens + stats.generated_tokens);
    const char *stop[1] = {NULL};
    g.stop = stop;
    g.n_stop = 1;
    CHECK_STATUS(kvedge_generate(session, " and", &g, NULL, NULL, NULL), KVEDGE_ERR_NULL_POINTER);
    CHECK(error_mentions("stop[0]"));
    g = greedy(8);
    CHECK_STATUS(kvedge_session_reset(session), KVEDGE_OK);
    struct collect stopped = {0};
    stopped.stop_after = 2;
    CHECK_STATUS(kvedge_chat(session, "Hello!", &g, collect_piece, &stopped, &finish), KVEDGE_OK);
    CHECK(stopped.pieces <= 2);
    CHECK(finish == KVEDGE_FINISH_CALLBACK || finish == KVEDGE_FINISH_END_OF_GENERATION);
    CHECK_STATUS(kvedge_chat(session, "And again?", &g, NULL, NULL, &finish), KVEDGE_OK);

    /* A prompt over the context leaves the session as it was. */
    kvedge_session *small = NULL;
    sp = kvedge_session_default_params();
    sp.context = 16;
    CHECK_STATUS(kvedge_session_create(model, &sp, &small), KVEDGE_OK);
    CHECK_STATUS(kvedge_generate(small, "This prompt is certainly longer than sixteen tokens of "
                                        "context, byte by byte.", &g, NULL, NULL, NULL),
                 KVEDGE_ERR_INVALID_ARGUMENT);
    CHECK(error_mentions("does not fit"));
    CHECK_STATUS(kvedge_session_stats(small, &stats), KVEDGE_OK);
    CHECK(stats.context_used == 0);

    /* An evicting session never fills: sink+window at 64 slots. */
    kvedge_session *windowed = NULL;
    sp = kvedge_session_default_params();
    sp.kv_policy = KVEDGE_KV_POLICY_WINDOW;
    sp.kv_budget_tokens = 64;
    CHECK_STATUS(kvedge_session_create(model, &sp, &windowed), KVEDGE_OK);
    g = greedy(40);
    CHECK_STATUS(kvedge_generate(windowed, "A prompt of some length that runs on and on, past "
                                           "the budget of this small cache.",
                                 &g, NULL, NULL, &finish), KVEDGE_OK);
    CHECK_STATUS(kvedge_session_stats(windowed, &stats), KVEDGE_OK);
    CHECK(stats.kv_slots == 64 && stats.kv_slots_used <= 64);
    CHECK(stats.context_used <= 64 || stats.kv_evicted_tokens > 0);

    /* Cancel from another thread; the session is busy meanwhile; stats never wait. */
    struct cancel_run run = {0};
    run.session = windowed;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, generate_until_cancelled, &run) == 0);
    while (!__atomic_load_n(&run.first_piece, __ATOMIC_SEQ_CST) &&
           !__atomic_load_n(&run.done, __ATOMIC_SEQ_CST)) {
    }
    CHECK(run.first_piece); /* else the generation ended before its first piece */
    CHECK_STATUS(kvedge_generate(windowed, "x", NULL, NULL, NULL, NULL), KVEDGE_ERR_BUSY);
    CHECK_STATUS(kvedge_session_reset(windowed), KVEDGE_ERR_BUSY);
    CHECK_STATUS(kvedge_session_stats(windowed, &stats), KVEDGE_OK);
    CHECK_STATUS(kvedge_session_cancel(windowed), KVEDGE_OK);
    __atomic_store_n(&run.go_on, 1, __ATOMIC_SEQ_CST);
    pthread_join(th, NULL);
    CHECK(run.status == KVEDGE_OK);
    CHECK(run.finish == KVEDGE_FINISH_CANCELLED);
    CHECK(run.pieces == 1);
    /* A cancel while idle does not touch the next generation. */
    CHECK_STATUS(kvedge_session_cancel(windowed), KVEDGE_OK);
    g = greedy(3);
    CHECK_STATUS(kvedge_generate(windowed, " more", &g, NULL, NULL, &finish), KVEDGE_OK);
    CHECK(finish != KVEDGE_FINISH_CANCELLED);

    /* Two threads, two sessions of one model: both give the single-thread text. */
    struct collect alone = {0};
    kvedge_session *ref = NULL;
    CHECK_STATUS(kvedge_session_create(model, NULL, &ref), KVEDGE_OK);
    g = greedy(12);
    CHECK_STATUS(kvedge_generate(ref, "The quick brown fox", &g, collect_piece, &alone, NULL),
                 KVEDGE_OK);
    struct parallel_run par[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        memset(&par[i], 0, sizeof par[i]);
        par[i].model = model;
        CHECK(pthread_create(&threads[i], NULL, generate_in_own_session, &par[i]) == 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        CHECK(par[i].status == KVEDGE_OK);
        CHECK(strcmp(par[i].out.text, alone.text) == 0);
    }

    /* Freed handles: an error, never a crash; the model may go before its sessions. */
    CHECK_STATUS(kvedge_session_free(ref), KVEDGE_OK);
    CHECK_STATUS(kvedge_generate(ref, "x", NULL, NULL, NULL, NULL), KVEDGE_ERR_INVALID_HANDLE);
    CHECK(error_mentions("session handle"));
    CHECK_STATUS(kvedge_session_stats(ref, &stats), KVEDGE_ERR_INVALID_HANDLE);
    CHECK_STATUS(kvedge_session_cancel(ref), KVEDGE_ERR_INVALID_HANDLE);
    CHECK_STATUS(kvedge_session_free(ref), KVEDGE_ERR_INVALID_HANDLE);
    CHECK_STATUS(kvedge_session_create((kvedge_model *)session, NULL, &small),
                 KVEDGE_ERR_INVALID_HANDLE);
    CHECK_STATUS(kvedge_model_free(model), KVEDGE_OK);
    CHECK_STATUS(kvedge_tokenize(model, "x", false, false, ids, 64, &n), KVEDGE_ERR_INVALID_HANDLE);
    CHECK_STATUS(kvedge_model_free(model), KVEDGE_ERR_INVALID_HANDLE);
    g = greedy(4);
    CHECK_STATUS(kvedge_generate(session, " still here", &g, NULL, NULL, NULL), KVEDGE_OK);
    CHECK_STATUS(kvedge_session_free(session), KVEDGE_OK);
    CHECK_STATUS(kvedge_session_free(small), KVEDGE_OK);
    CHECK_STATUS(kvedge_session_free(windowed), KVEDGE_OK);

    /* A GPU memory cap: weights over it fail to load; fit_memory fills what is left. */
    mp = kvedge_model_default_params();
    if (on_gpu) {
        mp.max_gpu_bytes = 1024;
        CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_ERR_OUT_OF_MEMORY);
        CHECK(model == NULL);
        mp.max_gpu_bytes = 0;
        CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_OK);
        kvedge_memory mem;
        CHECK_STATUS(kvedge_model_memory(model, &mem), KVEDGE_OK);
        uint64_t weights = mem.weights_bytes;
        CHECK(weights > 0 && mem.cap_bytes == 0);
        CHECK_STATUS(kvedge_model_free(model), KVEDGE_OK);
        mp.max_gpu_bytes = weights + 8u * 1024 * 1024;
        CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_OK);
        sp = kvedge_session_default_params();
        sp.kv_policy = KVEDGE_KV_POLICY_WINDOW;
        sp.context = 1000000; /* fit_memory takes at most the context */
        sp.fit_memory = true;
        CHECK_STATUS(kvedge_session_create(model, &sp, &session), KVEDGE_OK);
        CHECK_STATUS(kvedge_model_memory(model, &mem), KVEDGE_OK);
        CHECK(mem.sessions_bytes > 0 && mem.weights_bytes + mem.sessions_bytes <= mem.cap_bytes);
        CHECK_STATUS(kvedge_session_stats(session, &stats), KVEDGE_OK);
        CHECK(stats.kv_slots >= 128);
        printf("fit_memory: cap %llu, weights %llu, session %llu bytes, %llu KV slots\n",
               (unsigned long long)mem.cap_bytes, (unsigned long long)mem.weights_bytes,
               (unsigned long long)mem.sessions_bytes, (unsigned long long)stats.kv_slots);
        kvedge_session *second = NULL;
        CHECK_STATUS(kvedge_session_create(model, &sp, &second), KVEDGE_ERR_OUT_OF_MEMORY);
        CHECK_STATUS(kvedge_session_free(session), KVEDGE_OK);
        CHECK_STATUS(kvedge_model_memory(model, &mem), KVEDGE_OK);
        CHECK(mem.sessions_bytes == 0);
        CHECK_STATUS(kvedge_model_free(model), KVEDGE_OK);
    } else {
        mp.device = KVEDGE_DEVICE_CPU;
        mp.max_gpu_bytes = 1 << 30;
        CHECK_STATUS(kvedge_model_load(path, &mp, &model), KVEDGE_ERR_INVALID_ARGUMENT);
    }

    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
