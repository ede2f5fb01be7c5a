// Runs the JNI glue on a desktop JVM: errors become KvedgeException with the C status, a
// chat reply streams through the callback (UTF-8 bytes), a callback returning false stops,
// stats come back, handles are freed. Usage: JniSmoke MODEL.gguf
package dev.kvedge;

import java.nio.charset.StandardCharsets;

public final class JniSmoke {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        System.loadLibrary("kvedge_jni");
        try {
            Native.modelLoad(utf8("/nonexistent.gguf"), 1, 0);
            check(false, "loading a missing file must throw");
        } catch (KvedgeException e) {
            check(e.status == -6 && e.getMessage().contains("/nonexistent.gguf"), "model error: " + e.getMessage());
        }
        long model = Native.modelLoad(utf8(args[0]), 1, 0);
        long session = Native.sessionCreate(model, 0, 1, 64, false);
        StringBuilder reply = new StringBuilder();
        int finish = Native.chat(session, utf8("Hello \uD83D\uDE00!"), 6, 0.0f, piece -> {
            reply.append(new String(piece, StandardCharsets.UTF_8));
            return true;
        });
        check(finish == 0 || finish == 1, "finish " + finish);
        int[] pieces = {0};
        finish = Native.chat(session, utf8("More?"), 50, 0.0f, piece -> ++pieces[0] < 2);
        check(finish == 4 || finish == 0, "a callback returning false stops: finish " + finish);
        double[] stats = Native.stats(session);
        check(stats.length == 8 && stats[0] > 0 && stats[1] > 0 && stats[5] == 64, "stats");
        Native.sessionFree(session);
        try {
            Native.sessionFree(session);
            check(false, "a freed session must throw");
        } catch (KvedgeException e) {
            check(e.status == -4, "freed handle status " + e.status);
        }
        Native.modelFree(model);
        System.out.println("JNI glue ok: reply '" + reply + "', " + (long) stats[1] + " tokens generated");
    }
}
