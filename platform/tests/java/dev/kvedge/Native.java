// The JNI surface of platform/android/kotlin/dev/kvedge/Kvedge.kt as static Java methods
// (same JNI symbols), so the glue can be run on a desktop JVM by platform/tests/c_abi.rs.
package dev.kvedge;

final class Native {
    static native long modelLoad(byte[] path, int device, long maxGpuBytes);
    static native void modelFree(long model);
    static native long sessionCreate(long model, int context, int kvPolicy, long kvBudgetTokens, boolean fitMemory);
    static native void sessionFree(long session);
    static native void cancel(long session);
    static native int chat(long session, byte[] message, int maxTokens, float temperature, PieceCallback callback);
    static native double[] stats(long session);
}
