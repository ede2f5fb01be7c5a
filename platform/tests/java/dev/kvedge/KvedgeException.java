package dev.kvedge;

public class KvedgeException extends RuntimeException {
    public final int status;

    public KvedgeException(int status, String message) {
        super(message);
        this.status = status;
    }
}
