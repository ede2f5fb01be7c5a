#!/usr/bin/env python3
"""Make the dequantization test vectors in tests/data/quant/ with an implementation
independent of kvedge: the PyPI `gguf` package (gguf-py, maintained with llama.cpp).

For every type kvedge computes with, one GGUF fixture `<TYPE>.gguf` holds:
  - `q`:   raw blocks of that type (a 2-D tensor), and
  - `ref`: their dequantization by `gguf.quants.dequantize`, as F32 of the same shape.
Blocks come from real model tensors where a fetched model has that type (rows taken from
SmolLM2 Q4_1/Q8_0 and Qwen2.5 Q4_K/Q6_K), else from seeded random bytes with sane f16
scales (all quant bit patterns occur).

    pip install gguf==0.19.0 numpy
    python3 tools/make_quant_vectors.py [models/cache]
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "quant"
CACHE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "models" / "cache"
MODELS = [
    CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf",
    CACHE / "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
]
TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ROWS = 4


def real_rows(ty):
    """Up to ROWS rows of the first 2-D tensor of type `ty` in a fetched model."""
    for path in MODELS:
        if not path.exists():
            continue
        r = GGUFReader(path)
        for t in r.tensors:
            if t.tensor_type == ty and len(t.shape) == 2:
                data = np.asarray(t.data)  # (rows, row_bytes) uint8 for quantized types
                rows = data.reshape(int(t.shape[1]), -1)[:ROWS]
                return rows.view(np.uint8).copy(), int(t.shape[0]), f"{path.name}:{t.name}"
    return None


def random_rows(ty, rng):
    block, size = GGML_QUANT_SIZES[ty]
    ncols = max(block, 256) * 2 if block > 1 else 77
    nb = ncols // block
    if ty == T.F32:
        return rng.uniform(-1, 1, (ROWS, ncols)).astype(np.float32).view(np.uint8), ncols, "random"
    if ty == T.F16:
        return rng.uniform(-1, 1, (ROWS, ncols)).astype(np.float16).view(np.uint8), ncols, "random"
    if ty == T.BF16:
        f = rng.uniform(-1, 1, (ROWS, ncols)).astype(np.float32).view(np.uint32)
        return (f >> 16).astype(np.uint16).view(np.uint8), ncols, "random"
    raw = rng.integers(0, 256, (ROWS, nb, size), dtype=np.uint8)
    # Overwrite the f16 scale fields with small finite values (their offsets per type).
    fields = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
              T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}[ty]
    for off in fields:
        d = rng.uniform(-0.01, 0.01, (ROWS, nb)).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(ROWS, nb, 2)
    return raw.reshape(ROWS, nb * size), ncols, "random"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    for name in TYPES:
        ty = T[name]
        got = real_rows(ty) or random_rows(ty, rng)
        rows, ncols, source = got
        ref = dequantize(rows, ty).astype(np.float32).reshape(ROWS, ncols)
        w = GGUFWriter(OUT / f"{name}.gguf", "kvedge-test")
        w.add_string("kvedge.test.source", source)
        w.add_tensor("q", rows, raw_shape=rows.shape, raw_dtype=ty)
        w.add_tensor("ref", ref)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(f"{name:5} {ROWS}x{ncols} from {source}")


if __name__ == "__main__":
    main()
