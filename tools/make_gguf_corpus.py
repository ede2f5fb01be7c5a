#!/usr/bin/env python3
"""Make the malformed-GGUF corpus in tests/data/gguf_malformed/.

Each file is a small GGUF image, packed here by hand with `struct` (independently of
kvedge's writer), that is wrong in one way; EXPECTED.txt maps each file name to a piece of
the error message kvedge must give for it. `valid.gguf` is the well-formed base the others
are derived from and must parse. tests/gguf_corpus.rs reads them all; the fuzz target
starts from them.

    python3 tools/make_gguf_corpus.py
"""
import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "gguf_malformed"

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
F32_T, Q4_0_T = 0, 2


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def tinfo(name, dims, ttype, offset):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) \
        + struct.pack("<II", ttype, 0)[:4] + struct.pack("<Q", offset)


def image(kvs, tensors, data, magic=b"GGUF", version=3, n_kv=None, n_t=None, align=32):
    head = magic + struct.pack("<I", version) + struct.pack("<QQ",
        len(tensors) if n_t is None else n_t, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = (-len(body)) % align
    return body + b"\0" * pad + data


BASE_KVS = [
    kv("general.architecture", STR, s("llama")),
    kv("llama.block_count", U32, struct.pack("<I", 1)),
    kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 2) + s("a") + s("b")),
]
# t0: 8 f32 (32 bytes) at 0; t1: one Q4_0 block (18 bytes) at 32.
BASE_T = [tinfo("t0", [8], F32_T, 0), tinfo("t1", [32], Q4_0_T, 32)]
BASE_DATA = struct.pack("<8f", *range(8)) + bytes(range(18)) + b"\0" * 14


def base(**kw):
    return image(kw.pop("kvs", BASE_KVS), kw.pop("tensors", BASE_T), kw.pop("data", BASE_DATA), **kw)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    valid = base()
    header_len = len(valid) - len(BASE_DATA)  # includes the alignment padding
    cases = {
        "valid.gguf": (valid, "OK"),
        "empty.gguf": (b"", "too small for a GGUF header"),
        "short_header.gguf": (valid[:20], "too small for a GGUF header"),
        "bad_magic.gguf": (b"GGML" + valid[4:], "bad magic"),
        "version_1.gguf": (base(version=1), "unsupported GGUF version 1"),
        "version_99.gguf": (base(version=99), "unsupported GGUF version 99"),
        "truncated_in_kv.gguf": (valid[:40], "key-value count 3 is impossible"),
        "truncated_in_string_array.gguf": (valid[:150], "array length of key 'tokenizer.ggml.tokens' count 2 is impossible"),
        "truncated_in_key.gguf": (image(BASE_KVS, [], b"")[:24 + len(BASE_KVS[0]) + 8 + 10], "truncated while reading key #1"),
        "truncated_in_tensor_info.gguf": (image(BASE_KVS, BASE_T[:1], b"", align=1)[:-2], "truncated while reading offset of tensor 't0'"),
        "truncated_in_padding.gguf": (valid[:header_len - 4], "outside the data section of 0 bytes"),
        "truncated_in_data.gguf": (valid[:header_len + 40], "outside the data section"),
        "huge_kv_count.gguf": (base(n_kv=1 << 60), "key-value count 1152921504606846976 is impossible"),
        "huge_tensor_count.gguf": (base(n_t=1 << 62), "tensor count"),
        "huge_key_length.gguf": (base(kvs=[struct.pack("<Q", 1 << 62) + b"abc"]), "over the limit"),
        "huge_string_value.gguf": (base(kvs=[kv("k", STR, struct.pack("<Q", 1 << 40) + b"x")]), "over the limit"),
        "string_past_end.gguf": (base(kvs=[kv("k", STR, struct.pack("<Q", 5000) + b"x")]), "truncated"),
        "huge_array_len.gguf": (base(kvs=[kv("k", ARR, struct.pack("<IQ", U32, 1 << 61))]), "array length of key 'k'"),
        "unknown_value_type.gguf": (base(kvs=[kv("k", 13, b"\0" * 8)]), "unknown value type 13"),
        "unknown_array_type.gguf": (base(kvs=[kv("k", ARR, struct.pack("<IQ", 77, 1) + b"\0" * 8)]), "unknown value type 77"),
        "nested_array.gguf": (base(kvs=[kv("k", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U8, 0))]), "arrays of arrays"),
        "duplicate_key.gguf": (base(kvs=BASE_KVS + [BASE_KVS[1]]), "duplicate key 'llama.block_count'"),
        "bad_utf8_key.gguf": (base(kvs=[kv(b"\xff\xfe", U8, b"\1")]), "not valid UTF-8"),
        "alignment_not_pow2.gguf": (base(kvs=[kv("general.alignment", U32, struct.pack("<I", 3))]), "power of two, got 3"),
        "alignment_zero.gguf": (base(kvs=[kv("general.alignment", U32, struct.pack("<I", 0))]), "power of two, got 0"),
        "alignment_wrong_type.gguf": (base(kvs=[kv("general.alignment", STR, s("32"))]), "expected an integer, got string"),
        "zero_dims.gguf": (base(tensors=[tinfo("t0", [], F32_T, 0)]), "0 dimensions"),
        "five_dims.gguf": (base(tensors=[tinfo("t0", [1, 1, 1, 1, 8], F32_T, 0)]), "5 dimensions"),
        "dims_overflow.gguf": (base(tensors=[tinfo("t0", [1 << 40, 1 << 40], F32_T, 0)]), "overflow"),
        "dim_negative.gguf": (base(tensors=[tinfo("t0", [(1 << 64) - 8], F32_T, 0)]), "overflow"),
        "unknown_tensor_type.gguf": (base(tensors=[tinfo("t0", [8], 4, 0)]), "unknown ggml type id 4"),
        "huge_tensor_type.gguf": (base(tensors=[tinfo("t0", [8], 0xFFFFFFFF, 0)]), "unknown ggml type id 4294967295"),
        "block_not_multiple.gguf": (base(tensors=[tinfo("t1", [33], Q4_0_T, 0)]), "not a multiple of the Q4_0 block size 32"),
        "misaligned_offset.gguf": (base(tensors=[tinfo("t0", [8], F32_T, 1)]), "not a multiple of the alignment 32"),
        "offset_past_end.gguf": (base(tensors=[tinfo("t0", [8], F32_T, 1 << 20)]), "outside the data section"),
        "offset_overflow.gguf": (base(tensors=[tinfo("t0", [8], F32_T, (1 << 64) - 32)]), "outside the data section"),
        "size_past_end.gguf": (base(tensors=[tinfo("t0", [4096], F32_T, 0)]), "outside the data section"),
        "overlapping_tensors.gguf": (base(tensors=[tinfo("t0", [16], F32_T, 0), tinfo("t1", [32], Q4_0_T, 32)]), "overlap"),
        "duplicate_tensor.gguf": (base(tensors=[tinfo("t0", [8], F32_T, 0), tinfo("t0", [8], F32_T, 32)]), "duplicate tensor name 't0'"),
        # Found by cargo fuzz: a zero-size tensor with the data section past the end of file.
        "zero_size_tensor_past_end.gguf": (image(BASE_KVS, [tinfo("t0", [0], F32_T, 0)], b"", align=1), "outside the data section of 0 bytes"),
        "long_tensor_name.gguf": (base(tensors=[tinfo("t" * 100, [8], F32_T, 0)]), "over the limit of 64"),
    }
    lines = []
    for name, (data, expect) in cases.items():
        (OUT / name).write_bytes(data)
        lines.append(f"{name}\t{expect}")
    (OUT / "EXPECTED.txt").write_text(
        "# file<TAB>substring of the error kvedge must give (OK: must parse)\n" + "\n".join(lines) + "\n")
    print(f"{len(cases)} files in {OUT}")


if __name__ == "__main__":
    main()
