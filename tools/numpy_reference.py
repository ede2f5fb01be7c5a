#!/usr/bin/env python3
"""An independent float64 forward pass of a llama/qwen2 GGUF in numpy, for kvedge's
correctness tests: weights dequantized by the PyPI `gguf` package (one layer at a time, so
a 1.5B model fits in memory), every operation in float64, exact softmax, no KV-cache
rounding.

Last-token logits of a few prompts (token ids), written to
tests/data/golden/<name>.f64_logits.gguf as tensors `ids.N` (I32) and `logits.N` (F32):

    pip install gguf==0.19.0 numpy
    python3 tools/numpy_reference.py models/cache/SmolLM2-135M-Instruct.Q4_1.gguf smollm2 \\
        504,3575,282,4649,314  1,9690,198,2683,314,253

Perplexity of the first window of N tokens of TEXT by llama-perplexity's protocol (second
half scored), tokenized by llama.cpp (run with the venv that has PyPI cyllama):

    /tmp/llvenv/bin/python tools/numpy_reference.py MODEL.gguf --ppl-window TEXT 512

With `--llamacpp-rounding` after the window length, the same pass also applies the
roundings of llama.cpp's CPU backend (ggml-cpu), to show where llama.cpp's numbers come
from: each matmul input is quantized to the weight type's `vec_dot_type` (Q8_0 for
Q4_0/Q5_0/Q8_0 weights, Q8_1 for Q4_1/Q5_1, Q8_K for k-quants, f16 for F16), and the
attention operands it keeps in f16 (K and V cache, Q and the probabilities) are rounded
to f16. Everything else stays float64.
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden"


def round_f16(x):
    return x.astype(np.float16).astype(np.float64)


def quantize_q8_blocks(x, block):
    """ggml's quantize_row_q8_0 / q8_1 (scale amax/127 stored as f16), dequantized."""
    b = x.reshape(-1, block)
    d = np.abs(b).max(-1, keepdims=True) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.round(b * inv)
    return (q * round_f16(d)).reshape(x.shape)


def quantize_q8_k(x):
    """ggml's quantize_row_q8_K: per 256 values, iscale = -128 / (value of largest
    magnitude), q = round(iscale * x) clamped to 127, d = 1 / iscale (f32)."""
    b = x.reshape(-1, 256)
    idx = np.abs(b).argmax(-1)
    mx = b[np.arange(len(b)), idx][:, None]
    iscale = np.divide(-128.0, mx, out=np.zeros_like(mx), where=mx != 0)
    q = np.minimum(127.0, np.round(iscale * b))
    d = np.divide(1.0, iscale, out=np.zeros_like(iscale), where=iscale != 0).astype(np.float32)
    return (q * d).reshape(x.shape)


ACT_ROUNDING = {
    "Q4_0": lambda x: quantize_q8_blocks(x, 32),
    "Q5_0": lambda x: quantize_q8_blocks(x, 32),
    "Q8_0": lambda x: quantize_q8_blocks(x, 32),
    "Q4_1": lambda x: quantize_q8_blocks(x, 32),
    "Q5_1": lambda x: quantize_q8_blocks(x, 32),
    "F16": round_f16,
    **{t: quantize_q8_k for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")},
}


class Reference:
    def __init__(self, path, llamacpp_rounding=False):
        self.llamacpp = llamacpp_rounding
        self.r = GGUFReader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        arch = self.meta("general.architecture")
        self.n_layer = int(self.meta(f"{arch}.block_count"))
        self.n_head = int(self.meta(f"{arch}.attention.head_count"))
        self.n_kv = int(self.meta(f"{arch}.attention.head_count_kv", self.n_head))
        self.eps = float(self.meta(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.base = float(self.meta(f"{arch}.rope.freq_base", 10000.0))
        self.neox = arch == "qwen2"
        self.hd = int(self.tensors["token_embd.weight"].shape[0]) // self.n_head
        self.n_rot = int(self.meta(f"{arch}.rope.dimension_count", self.hd))

    def meta(self, k, default=None):
        if k not in self.r.fields:
            return default
        f = self.r.fields[k]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0].name == "STRING" else v[0]

    def w(self, name):
        t = self.tensors[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape([int(d) for d in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)

    def mm(self, x, name):
        """x @ W.T for the weight `name`, with llama.cpp's input rounding when asked."""
        if self.llamacpp:
            x = ACT_ROUNDING.get(self.tensors[name].tensor_type.name, lambda v: v)(x)
        return x @ self.w(name).T

    def f16(self, x):
        return round_f16(x) if self.llamacpp else x

    def rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * g

    def rope(self, v, nh):
        n, hd, half = v.shape[0], self.hd, self.n_rot // 2
        v = v.reshape(n, nh, hd).copy()
        theta = np.arange(n)[:, None] * self.base ** (-2.0 * np.arange(half) / self.n_rot)[None, :]
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a = np.arange(half) if self.neox else 2 * np.arange(half)
        b = a + half if self.neox else a + 1
        x0, x1 = v[:, :, a].copy(), v[:, :, b].copy()
        v[:, :, a] = x0 * c - x1 * s
        v[:, :, b] = x0 * s + x1 * c
        return v

    def logits(self, ids, rows):
        """Logits (float64) of the positions `rows` after running `ids` from position 0."""
        x = self.w("token_embd.weight")[ids]
        n, (H, KV, hd) = len(ids), (self.n_head, self.n_kv, self.hd)
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for l in range(self.n_layer):
            b = lambda s: f"blk.{l}.{s}"
            xn = self.rms(x, self.w(b("attn_norm.weight")))
            q, k, v = (self.mm(xn, b(f"attn_{c}.weight")) for c in "qkv")
            if self.neox:
                q, k, v = q + self.w(b("attn_q.bias")), k + self.w(b("attn_k.bias")), v + self.w(b("attn_v.bias"))
            q, k, v = self.rope(q, H), self.rope(k, KV), v.reshape(n, KV, hd)
            q, k, v = self.f16(q), self.f16(k), self.f16(v)
            att = np.zeros((n, H, hd))
            for h in range(H):
                kh = h // (H // KV)
                s = q[:, h] @ k[:, kh].T / np.sqrt(hd) + mask
                p = np.exp(s - s.max(-1, keepdims=True))
                att[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, kh]
            x = x + self.mm(att.reshape(n, -1), b("attn_output.weight"))
            xn = self.rms(x, self.w(b("ffn_norm.weight")))
            g, u = self.mm(xn, b("ffn_gate.weight")), self.mm(xn, b("ffn_up.weight"))
            x = x + self.mm(g / (1 + np.exp(-g)) * u, b("ffn_down.weight"))
        out = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        return self.mm(self.rms(x[rows], self.w("output_norm.weight")), out)


def prompt_logits(path, name, prompts):
    ref = Reference(path)
    writer = GGUFWriter(OUT / f"{name}.f64_logits.gguf", "kvedge-test")
    writer.add_string("kvedge.test.source", f"tools/numpy_reference.py on {Path(path).name}")
    for i, p in enumerate(prompts):
        ids = [int(t) for t in p.split(",")]
        logits = ref.logits(ids, [len(ids) - 1])[0].astype(np.float32)
        writer.add_tensor(f"ids.{i}", np.array(ids, dtype=np.int32))
        writer.add_tensor(f"logits.{i}", logits)
        print(f"prompt {i}: {len(ids)} tokens, logits[:4] = {logits[:4]}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def ppl_window(path, text_path, n_ctx, llamacpp_rounding):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_golden import L, Model  # cyllama, for llama.cpp's tokenization

    L.disable_logging()
    L.llama_backend_init()
    model = Model(path, L.LlamaModelParams())  # keep alive while its vocab is used
    vocab = model.get_vocab()
    ids = list(vocab.tokenize(Path(text_path).read_text(), add_special=True, parse_special=False))[:n_ctx]
    if vocab.get_add_bos():
        ids[0] = vocab.token_bos()
    del vocab, model
    first = n_ctx // 2
    logits = Reference(path, llamacpp_rounding).logits(ids, list(range(first, n_ctx - 1)))
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    nll = lse - logits[np.arange(len(logits)), ids[first + 1:n_ctx]]
    kind = "with llama.cpp's CPU roundings" if llamacpp_rounding else "exact"
    print(f"float64 reference ({kind}), window 1 of {n_ctx}: PPL = {np.exp(nll.mean()):.4f} over {len(nll)} tokens")


def main():
    if len(sys.argv) > 2 and sys.argv[2] == "--ppl-window":
        return ppl_window(sys.argv[1], sys.argv[3], int(sys.argv[4]), "--llamacpp-rounding" in sys.argv[5:])
    prompt_logits(sys.argv[1], sys.argv[2], sys.argv[3:])


if __name__ == "__main__":
    main()
