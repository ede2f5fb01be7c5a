/* JNI glue between dev.kvedge.Native (Kotlin) and the kvedge C ABI. Strings cross as
 * UTF-8 byte arrays, not jstring: JNI's GetStringUTFChars gives "modified UTF-8", which
 * encodes characters outside the BMP (emoji) as surrogate pairs that are not valid UTF-8.
 * Errors become dev.kvedge.KvedgeException(status, message). Handles are jlong.
 * Built into libkvedge_jni.so with libkvedge_ffi.a linked in (scripts/android-build.sh). */
#include <jni.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvedge.h"

static void throw_status(JNIEnv *env, int32_t status) {
    jclass cls = (*env)->FindClass(env, "dev/kvedge/KvedgeException");
    if (cls == NULL) return; /* NoClassDefFoundError is pending */
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(ILjava/lang/String;)V");
    if (ctor == NULL) return;
    jstring msg = (*env)->NewStringUTF(env, kvedge_last_error());
    jobject ex = (*env)->NewObject(env, cls, ctor, (jint)status, msg);
    if (ex != NULL) (*env)->Throw(env, (jthrowable)ex);
}

/* A NUL-terminated copy of a Java byte array (UTF-8); NULL with OutOfMemoryError pending. */
static char *c_string(JNIEnv *env, jbyteArray bytes) {
    if (bytes == NULL) return NULL;
    jsize n = (*env)->GetArrayLength(env, bytes);
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        jclass oom = (*env)->FindClass(env, "java/lang/OutOfMemoryError");
        if (oom != NULL) (*env)->ThrowNew(env, oom, "kvedge_jni: string copy");
        return NULL;
    }
    (*env)->GetByteArrayRegion(env, bytes, 0, n, (jbyte *)s);
    s[n] = 0;
    return s;
}

JNIEXPORT jlong JNICALL Java_dev_kvedge_Native_modelLoad(JNIEnv *env, jclass cls, jbyteArray path,
                                                         jint device, jlong max_gpu_bytes) {
    (void)cls;
    char *p = c_string(env, path);
    if (p == NULL && path != NULL) return 0;
    kvedge_model_params params = kvedge_model_default_params();
    params.device = device;
    params.max_gpu_bytes = (uint64_t)max_gpu_bytes;
    kvedge_model *model = NULL;
    int32_t st = kvedge_model_load(p, &params, &model);
    free(p);
    if (st != KVEDGE_OK) throw_status(env, st);
    return (jlong)(intptr_t)model;
}

JNIEXPORT void JNICALL Java_dev_kvedge_Native_modelFree(JNIEnv *env, jclass cls, jlong model) {
    (void)cls;
    int32_t st = kvedge_model_free((kvedge_model *)(intptr_t)model);
    if (st != KVEDGE_OK) throw_status(env, st);
}

JNIEXPORT jlong JNICALL Java_dev_kvedge_Native_sessionCreate(JNIEnv *env, jclass cls, jlong model,
                                                             jint context, jint kv_policy,
                                                             jlong kv_budget_tokens,
                                                             jboolean fit_memory) {
    (void)cls;
    kvedge_session_params params = kvedge_session_default_params();
    params.context = (uint32_t)context;
    params.kv_policy = kv_policy;
    params.kv_budget_tokens = (uint64_t)kv_budget_tokens;
    params.fit_memory = fit_memory == JNI_TRUE;
    kvedge_session *session = NULL;
    int32_t st = kvedge_session_create((kvedge_model *)(intptr_t)model, &params, &session);
    if (st != KVEDGE_OK) throw_status(env, st);
    return (jlong)(intptr_t)session;
}

JNIEXPORT void JNICALL Java_dev_kvedge_Native_sessionFree(JNIEnv *env, jclass cls, jlong session) {
    (void)cls;
    int32_t st = kvedge_session_free((kvedge_session *)(intptr_t)session);
    if (st != KVEDGE_OK) throw_status(env, st);
}

JNIEXPORT void JNICALL Java_dev_kvedge_Native_cancel(JNIEnv *env, jclass cls, jlong session) {
    (void)cls;
    int32_t st = kvedge_session_cancel((kvedge_session *)(intptr_t)session);
    if (st != KVEDGE_OK) throw_status(env, st);
}

struct piece_sink {
    JNIEnv *env;
    jobject callback;
    jmethodID on_piece;
};

/* Hands each piece to PieceCallback.onPiece(ByteArray): Boolean (false stops). */
static int32_t to_kotlin(const char *piece, size_t len, void *user_data) {
    struct piece_sink *sink = user_data;
    JNIEnv *env = sink->env;
    jbyteArray bytes = (*env)->NewByteArray(env, (jsize)len);
    if (bytes == NULL) return 1;
    (*env)->SetByteArrayRegion(env, bytes, 0, (jsize)len, (const jbyte *)piece);
    jboolean go_on = (*env)->CallBooleanMethod(env, sink->callback, sink->on_piece, bytes);
    (*env)->DeleteLocalRef(env, bytes);
    /* An exception thrown by the callback stops the generation and propagates. */
    return (*env)->ExceptionCheck(env) || go_on != JNI_TRUE;
}

JNIEXPORT jint JNICALL Java_dev_kvedge_Native_chat(JNIEnv *env, jclass cls, jlong session,
                                                   jbyteArray message, jint max_tokens,
                                                   jfloat temperature, jobject callback) {
    (void)cls;
    char *m = c_string(env, message);
    if (m == NULL && message != NULL) return KVEDGE_FINISH_NONE;
    struct piece_sink sink = {env, callback, NULL};
    if (callback != NULL) {
        jclass cb_cls = (*env)->GetObjectClass(env, callback);
        sink.on_piece = (*env)->GetMethodID(env, cb_cls, "onPiece", "([B)Z");
        if (sink.on_piece == NULL) {
            free(m);
            return KVEDGE_FINISH_NONE; /* NoSuchMethodError is pending */
        }
    }
    kvedge_generate_params params = kvedge_generate_default_params();
    params.max_tokens = (uint32_t)max_tokens;
    params.temperature = temperature;
    int32_t finish = KVEDGE_FINISH_NONE;
    int32_t st = kvedge_chat((kvedge_session *)(intptr_t)session, m, &params,
                             callback != NULL ? to_kotlin : NULL, &sink, &finish);
    free(m);
    if (st != KVEDGE_OK && !(*env)->ExceptionCheck(env)) throw_status(env, st);
    return finish;
}

/* [prompt tokens, generated tokens, prefill tok/s, decode tok/s, KV bytes, KV slots,
 *  KV slots used, evicted tokens] */
JNIEXPORT jdoubleArray JNICALL Java_dev_kvedge_Native_stats(JNIEnv *env, jclass cls,
                                                            jlong session) {
    (void)cls;
    kvedge_stats s;
    int32_t st = kvedge_session_stats((kvedge_session *)(intptr_t)session, &s);
    if (st != KVEDGE_OK) {
        throw_status(env, st);
        return NULL;
    }
    jdouble v[8] = {(jdouble)s.prompt_tokens, (jdouble)s.generated_tokens,
                    s.prefill_tokens_per_s,   s.decode_tokens_per_s,
                    (jdouble)s.kv_bytes,      (jdouble)s.kv_slots,
                    (jdouble)s.kv_slots_used, (jdouble)s.kv_evicted_tokens};
    jdoubleArray out = (*env)->NewDoubleArray(env, 8);
    if (out != NULL) (*env)->SetDoubleArrayRegion(env, out, 0, 8, v);
    return out;
}
