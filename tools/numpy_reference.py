#!/usr/bin/env python3
"""An independent float64 forward pass of a llama/qwen2 GGUF in numpy, for kvedge's
correctness tests: weights dequantized by the PyPI `gguf` package, every operation in
float64, exact softmax, no KV-cache rounding. It writes the last-token logits of a few
prompts (token ids) to tests/data/golden/<name>.f64_logits.gguf, tensors `ids.N` (I32)
and `logits.N` (F32).

    pip install gguf==0.19.0 numpy
    python3 tools/numpy_reference.py models/cache/SmolLM2-135M-Instruct.Q4_1.gguf smollm2 \
        504,3575,282,4649,314  1,9690,198,2683,314,253

With `--ppl-window TEXT N` instead of a name and prompts, it computes the perplexity of the
first window of N tokens of TEXT by llama-perplexity's protocol (second half scored),
tokenized by llama.cpp (PyPI cyllama), as the exact-arithmetic reference for
`kvedge eval ppl` and llama.cpp's perplexity (run it with the venv that has cyllama).
Layers are dequantized one at a time, so a 1.5B model fits in memory in float64.
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden"


def main():
    if len(sys.argv) > 2 and sys.argv[2] == "--ppl-window":
        return ppl_window(sys.argv[1], sys.argv[3], int(sys.argv[4]))
    path, name, prompts = sys.argv[1], sys.argv[2], sys.argv[3:]
    r = GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}

    def w(n):
        t = tensors[n]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape([int(d) for d in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)

    def meta(k, default=None):
        if k not in r.fields:
            return default
        f = r.fields[k]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0].name == "STRING" else v[0]

    arch = meta("general.architecture")
    n_layer = int(meta(f"{arch}.block_count"))
    n_head = int(meta(f"{arch}.attention.head_count"))
    n_kv = int(meta(f"{arch}.attention.head_count_kv", n_head))
    eps = float(meta(f"{arch}.attention.layer_norm_rms_epsilon"))
    base = float(meta(f"{arch}.rope.freq_base", 10000.0))
    neox = arch == "qwen2"
    emb = w("token_embd.weight")
    out_w = w("output.weight") if "output.weight" in tensors else emb
    hd = emb.shape[1] // n_head
    n_rot = int(meta(f"{arch}.rope.dimension_count", hd))

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(v, nh, n):
        v = v.reshape(n, nh, hd).copy()
        half = n_rot // 2
        pos = np.arange(n)[:, None]
        theta = pos * base ** (-2.0 * np.arange(half) / n_rot)[None, :]
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a = np.arange(half) if neox else 2 * np.arange(half)
        b = a + half if neox else a + 1
        x0, x1 = v[:, :, a].copy(), v[:, :, b].copy()
        v[:, :, a] = x0 * c - x1 * s
        v[:, :, b] = x0 * s + x1 * c
        return v

    layers = []
    for l in range(n_layer):
        names = ["attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                 "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
        if neox:
            names += ["attn_q.bias", "attn_k.bias", "attn_v.bias"]
        layers.append({n: w(f"blk.{l}.{n}") for n in names})

    writer = GGUFWriter(OUT / f"{name}.f64_logits.gguf", "kvedge-test")
    writer.add_string("kvedge.test.source", f"tools/numpy_reference.py on {Path(path).name}")
    for i, p in enumerate(prompts):
        ids = [int(t) for t in p.split(",")]
        x = emb[ids].copy()
        n = len(ids)
        for L in layers:
            xn = rms(x, L["attn_norm.weight"])
            q, k, v = (xn @ L[f"attn_{c}.weight"].T for c in "qkv")
            if neox:
                q, k, v = q + L["attn_q.bias"], k + L["attn_k.bias"], v + L["attn_v.bias"]
            q, k, v = rope(q, n_head, n), rope(k, n_kv, n), v.reshape(n, n_kv, hd)
            att = np.zeros((n, n_head, hd))
            for h in range(n_head):
                kh = h // (n_head // n_kv)
                s = q[:, h] @ k[:, kh].T / np.sqrt(hd) + np.triu(np.full((n, n), -np.inf), 1)
                pr = np.exp(s - s.max(-1, keepdims=True))
                att[:, h] = (pr / pr.sum(-1, keepdims=True)) @ v[:, kh]
            x = x + att.reshape(n, -1) @ L["attn_output.weight"].T
            xn = rms(x, L["ffn_norm.weight"])
            g, u = xn @ L["ffn_gate.weight"].T, xn @ L["ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ L["ffn_down.weight"].T
        logits = (rms(x, w("output_norm.weight"))[-1] @ out_w.T).astype(np.float32)
        writer.add_tensor(f"ids.{i}", np.array(ids, dtype=np.int32))
        writer.add_tensor(f"logits.{i}", logits)
        print(f"prompt {i}: {n} tokens, logits[:4] = {logits[:4]}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()



def ppl_window(path, text_path, n_ctx):
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
    r = GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}

    def w(n):
        t = tensors[n]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape([int(d) for d in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)

    def meta(k, default=None):
        if k not in r.fields:
            return default
        f = r.fields[k]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0].name == "STRING" else v[0]

    arch = meta("general.architecture")
    n_head = int(meta(f"{arch}.attention.head_count"))
    n_kv = int(meta(f"{arch}.attention.head_count_kv", n_head))
    eps = float(meta(f"{arch}.attention.layer_norm_rms_epsilon"))
    base = float(meta(f"{arch}.rope.freq_base", 10000.0))
    neox = arch == "qwen2"
    x = w("token_embd.weight")[ids]
    n, e = x.shape
    hd = e // n_head
    half = hd // 2
    theta = np.arange(n)[:, None] * base ** (-2.0 * np.arange(half) / hd)[None, :]
    c, sn = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a_idx = np.arange(half) if neox else 2 * np.arange(half)
    b_idx = a_idx + half if neox else a_idx + 1

    def rope(v, nh):
        v = v.reshape(n, nh, hd).copy()
        x0, x1 = v[:, :, a_idx].copy(), v[:, :, b_idx].copy()
        v[:, :, a_idx] = x0 * c - x1 * sn
        v[:, :, b_idx] = x0 * sn + x1 * c
        return v

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(int(meta(f"{arch}.block_count"))):
        b = lambda s: f"blk.{l}.{s}"
        xn = rms(x, w(b("attn_norm.weight")))
        q, k, v = (xn @ w(b(f"attn_{t}.weight")).T for t in "qkv")
        if neox:
            q, k, v = q + w(b("attn_q.bias")), k + w(b("attn_k.bias")), v + w(b("attn_v.bias"))
        q, k, v = rope(q, n_head), rope(k, n_kv), v.reshape(n, n_kv, hd)
        att = np.zeros((n, n_head, hd))
        for h in range(n_head):
            kh = h // (n_head // n_kv)
            s_ = q[:, h] @ k[:, kh].T / np.sqrt(hd) + mask
            p = np.exp(s_ - s_.max(-1, keepdims=True))
            att[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, kh]
        x = x + att.reshape(n, -1) @ w(b("attn_output.weight")).T
        xn = rms(x, w(b("ffn_norm.weight")))
        g, u = xn @ w(b("ffn_gate.weight")).T, xn @ w(b("ffn_up.weight")).T
        x = x + (g / (1 + np.exp(-g)) * u) @ w(b("ffn_down.weight")).T
        print(f"layer {l} done", file=sys.stderr)
    out = w("output.weight") if "output.weight" in tensors else w("token_embd.weight")
    first = n_ctx // 2
    logits = rms(x[first:n_ctx - 1], w("output_norm.weight")) @ out.T
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    nll = lse - logits[np.arange(len(logits)), ids[first + 1:n_ctx]]
    print(f"float64 reference, window 1 of {n_ctx}: PPL = {np.exp(nll.mean()):.4f} over {len(nll)} tokens")


if __name__ == "__main__":
    main()
