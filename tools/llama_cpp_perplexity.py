#!/usr/bin/env python3
"""Perplexity with llama.cpp's library (PyPI `cyllama`), by the protocol of its
`llama-perplexity` tool: windows of n_ctx tokens (remainder dropped), the first token of
each replaced by BOS when the vocabulary adds one, the second half of each window scored.
It prints the same running `[i]ppl` stream and final estimate, so kvedge's
`kvedge eval ppl` can be set beside it.

    /tmp/llvenv/bin/python tools/llama_cpp_perplexity.py MODEL.gguf TEXT --ctx 512 [--chunks N]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_golden import L, Model  # noqa: E402  (cyllama with the n_vocab shim)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0)
    ap.add_argument("--cache-type", choices=["f16", "q8_0", "q4_0"], default="f16",
                    help="KV cache type for K and V (llama-perplexity's -ctk/-ctv)")
    ap.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                    help="llama.cpp's flash attention (its default: auto)")
    a = ap.parse_args()
    L.disable_logging()
    L.llama_backend_init()
    model = Model(a.model, L.LlamaModelParams())
    vocab = model.get_vocab()
    text = Path(a.text).read_text()
    tokens = vocab.tokenize(text, add_special=True, parse_special=False)
    n_chunk = len(tokens) // a.ctx
    if a.chunks > 0:
        n_chunk = min(n_chunk, a.chunks)
    add_bos = vocab.get_add_bos()
    first = a.ctx // 2
    nll = nll2 = 0.0
    count = 0
    n_vocab = vocab.n_vocab
    for i in range(n_chunk):
        win = list(tokens[i * a.ctx:(i + 1) * a.ctx])
        if add_bos:
            win[0] = vocab.token_bos()
        cp = L.LlamaContextParams()
        cp.n_ctx = a.ctx
        cp.n_batch = a.ctx
        cp.n_ubatch = a.ctx
        cp.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[a.flash_attn]
        cp.type_k = cp.type_v = {"f16": 1, "q8_0": 8, "q4_0": 2}[a.cache_type]  # ggml_type ids
        ctx = L.LlamaContext(model, cp)
        batch = L.LlamaBatch(n_tokens=a.ctx, embd=0, n_seq_max=1)
        for j, t in enumerate(win):
            batch.add(t, j, [0], True)
        ctx.decode(batch)
        for j in range(first, a.ctx - 1):
            lg = np.array(ctx.get_logits_ith(j), dtype=np.float64)
            m = lg.max()
            v = -(lg[win[j + 1]] - m - np.log(np.exp(lg - m).sum()))
            nll += v
            nll2 += v * v
            count += 1
        ctx.close()
        print(f"[{i + 1}]{np.exp(nll / count):.4f},", end="", flush=True)
    mean = nll / count
    var = max(nll2 / count - mean * mean, 0.0)
    ppl = np.exp(mean)
    print(f"\nFinal estimate: PPL = {ppl:.4f} +/- {ppl * np.sqrt(var / (count - 1)):.5f} "
          f"({n_chunk} windows of {a.ctx}, {count} scored tokens, {len(tokens)} tokens in text)")


if __name__ == "__main__":
    main()
