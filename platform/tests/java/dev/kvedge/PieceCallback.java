package dev.kvedge;

public interface PieceCallback {
    boolean onPiece(byte[] piece);
}
