/* A minimal chat over the kvedge C ABI: one user message per line of stdin, the reply
 * streamed to stdout, the session's stats to stderr after each reply.
 *
 *   chat MODEL.gguf [-n MAX_TOKENS] [--cpu] [--kv-budget SLOTS --kv-policy window|h2o|nacl]
 *
 * Build (see examples/c/README.md): cc -Iplatform/include examples/c/chat.c
 *   target/release/libkvedge_ffi.a -lpthread -ldl -lm -o chat   (static), or
 *   -Ltarget/release -lkvedge_ffi (dynamic). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvedge.h"

static int32_t print_piece(const char *piece, size_t len, void *user_data) {
    (void)user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0; /* nonzero would stop the reply here */
}

static void on_progress(uint64_t done, uint64_t total, void *user_data) {
    (void)user_data;
    if (done == total) fprintf(stderr, "loaded %llu tensors\n", (unsigned long long)total);
}

static int fail(const char *what, int32_t status) {
    fprintf(stderr, "%s: %s: %s\n", what, kvedge_status_name(status), kvedge_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr,
                "usage: %s MODEL.gguf [-n MAX_TOKENS] [--cpu] [--kv-budget SLOTS "
                "--kv-policy window|h2o|nacl]\n",
                argv[0]);
        return 2;
    }
    kvedge_model_params mp = kvedge_model_default_params();
    kvedge_session_params sp = kvedge_session_default_params();
    kvedge_generate_params gp = kvedge_generate_default_params();
    gp.temperature = 0.0f; /* greedy: the same answer every run */
    for (int i = 2; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "-n") == 0 && next) {
            gp.max_tokens = (uint32_t)strtoul(next, NULL, 10);
            i++;
        } else if (strcmp(argv[i], "--cpu") == 0) {
            mp.device = KVEDGE_DEVICE_CPU;
        } else if (strcmp(argv[i], "--kv-budget") == 0 && next) {
            sp.kv_budget_tokens = strtoull(next, NULL, 10);
            i++;
        } else if (strcmp(argv[i], "--kv-policy") == 0 && next) {
            if (strcmp(next, "window") == 0) sp.kv_policy = KVEDGE_KV_POLICY_WINDOW;
            else if (strcmp(next, "h2o") == 0) sp.kv_policy = KVEDGE_KV_POLICY_H2O;
            else if (strcmp(next, "nacl") == 0) sp.kv_policy = KVEDGE_KV_POLICY_NACL;
            else {
                fprintf(stderr, "unknown KV policy '%s': expected window, h2o or nacl\n", next);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "unknown or incomplete argument '%s'\n", argv[i]);
            return 2;
        }
    }

    fprintf(stderr, "kvedge %s\n", kvedge_version());
    mp.progress = on_progress;
    kvedge_model *model = NULL;
    int32_t st = kvedge_model_load(argv[1], &mp, &model);
    if (st != KVEDGE_OK) return fail("load", st);
    kvedge_session *session = NULL;
    st = kvedge_session_create(model, &sp, &session);
    if (st != KVEDGE_OK) {
        kvedge_model_free(model);
        return fail("session", st);
    }

    char line[4096];
    int status = 0;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == 0) continue;
        int32_t finish = KVEDGE_FINISH_NONE;
        st = kvedge_chat(session, line, &gp, print_piece, NULL, &finish);
        printf("\n");
        if (st != KVEDGE_OK) {
            status = fail("chat", st);
            break;
        }
        kvedge_stats s;
        kvedge_session_stats(session, &s);
        fprintf(stderr,
                "[%llu prompt tokens at %.1f tok/s, %llu generated at %.1f tok/s, "
                "KV %llu bytes, %llu/%llu slots, %llu evicted, finish %d]\n",
                (unsigned long long)s.prompt_tokens, s.prefill_tokens_per_s,
                (unsigned long long)s.generated_tokens, s.decode_tokens_per_s,
                (unsigned long long)s.kv_bytes, (unsigned long long)s.kv_slots_used,
                (unsigned long long)s.kv_slots, (unsigned long long)s.kv_evicted_tokens, finish);
    }
    kvedge_session_free(session);
    kvedge_model_free(model);
    return status;
}
