// Thin Kotlin wrapper over the kvedge C ABI through kvedge_jni.c. Strings cross JNI as
// UTF-8 byte arrays. Model may be shared between threads; a Session is used by one
// thread at a time, except cancel(), which any thread may call.
package dev.kvedge

class KvedgeException(val status: Int, message: String) : RuntimeException(message)

/** Receives each piece of generated text; return false to stop. */
fun interface PieceCallback {
    fun onPiece(piece: ByteArray): Boolean
}

internal object Native {
    init {
        System.loadLibrary("kvedge_jni")
    }

    external fun modelLoad(path: ByteArray, device: Int, maxGpuBytes: Long): Long
    external fun modelFree(model: Long)
    external fun sessionCreate(model: Long, context: Int, kvPolicy: Int, kvBudgetTokens: Long, fitMemory: Boolean): Long
    external fun sessionFree(session: Long)
    external fun cancel(session: Long)
    external fun chat(session: Long, message: ByteArray, maxTokens: Int, temperature: Float, callback: PieceCallback?): Int
    external fun stats(session: Long): DoubleArray
}

/** A GGUF model on the GPU (device 0) or CPU (1); maxGpuBytes 0 means no cap. */
class Model(path: String, device: Int = 0, maxGpuBytes: Long = 0) : AutoCloseable {
    internal val handle: Long = Native.modelLoad(path.toByteArray(Charsets.UTF_8), device, maxGpuBytes)

    override fun close() = Native.modelFree(handle)
}

data class Stats(
    val promptTokens: Long,
    val generatedTokens: Long,
    val prefillTokensPerS: Double,
    val decodeTokensPerS: Double,
    val kvBytes: Long,
    val kvSlots: Long,
    val kvSlotsUsed: Long,
    val kvEvictedTokens: Long,
)

/** A conversation. kvPolicy: 0 full, 1 window, 2 h2o, 3 nacl, 4 gate (as in kvedge.h; gate needs
 *  gates inside the model file here: a separate gate file is passed through the C ABI only). */
class Session(
    model: Model,
    context: Int = 0,
    kvPolicy: Int = 0,
    kvBudgetTokens: Long = 0,
    fitMemory: Boolean = false,
) : AutoCloseable {
    private val handle: Long = Native.sessionCreate(model.handle, context, kvPolicy, kvBudgetTokens, fitMemory)

    /** The reply to [message], streamed to [onPiece]; returns the finish reason (KVEDGE_FINISH_*). */
    fun chat(message: String, maxTokens: Int = 256, temperature: Float = 0.8f, onPiece: (String) -> Boolean): Int {
        // Pieces end on whole characters, so each decodes on its own.
        val cb = PieceCallback { bytes -> onPiece(String(bytes, Charsets.UTF_8)) }
        return Native.chat(handle, message.toByteArray(Charsets.UTF_8), maxTokens, temperature, cb)
    }

    /** Stop the running reply (any thread). */
    fun cancel() = Native.cancel(handle)

    fun stats(): Stats {
        val v = Native.stats(handle)
        return Stats(v[0].toLong(), v[1].toLong(), v[2], v[3], v[4].toLong(), v[5].toLong(), v[6].toLong(), v[7].toLong())
    }

    override fun close() = Native.sessionFree(handle)
}
