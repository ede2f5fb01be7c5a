#!/usr/bin/env python3
"""Golden data from llama.cpp for kvedge's end-to-end tests: tokenization and greedy
generation on the same GGUF. llama.cpp comes from the PyPI wheel `cyllama` (which ships
llama.cpp's library; the version is recorded in each file).

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install cyllama==0.7.0 numpy
    /tmp/llvenv/bin/python tools/make_golden.py models/cache/SmolLM2-135M-Instruct.Q4_1.gguf smollm2
    /tmp/llvenv/bin/python tools/make_golden.py models/cache/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf qwen2.5-1.5b

Writes tests/data/golden/<name>.tokens.txt and <name>.greedy.txt (`--tokens-only`: only
the first; used for the synthetic SentencePiece vocabulary:
    kvedge synth --tokenizer spm --vocab 512 --seed 1 -o /tmp/spm.gguf
    /tmp/llvenv/bin/python tools/make_golden.py /tmp/spm.gguf synthetic-spm --tokens-only). Texts are stored as hex
of their UTF-8 bytes so that every byte (whitespace runs, emoji, invalid-looking
sequences) survives exactly.
"""
import json
import sys
from pathlib import Path

import numpy as np
from cyllama.llama import llama_cpp as L

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden"

TOKENIZE_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space and trailing space ",
    "Numbers: 0 7 42 123 4567 89012 3.14159 -17 1,000,000 2026-11-24",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tlet x: Vec<u8> = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}",
    "Whitespace runs:  two   three    four\n\n\nthree newlines\r\nCRLF\t\ttabs",
    "Emoji: 🤖🚀 👩‍👩‍👧 ✨ and flags 🇫🇷🇯🇵",
    "Ελληνικά, Русский текст, 中文文本, 日本語のテキスト, 한국어, العربية, हिन्दी",
    "Contractions: I'm, you're, it's, we've, they'll, she'd, DON'T, Can't",
    "Mixed   CASE and_snake_case and camelCaseWords and URLs https://example.com/a?b=c&d=e",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Special-looking but plain: <|im_start without end, <s> </s> [INST]",
    "   ",
    "\n",
    "a",
    "Ünïcödé àccents: naïve café résumé façade Zürich",
    "Symbols: !@#$%^&*()_+-=[]{}|;':\",./<>?`~ ±×÷≠≤≥∞ €£¥",
]

GREEDY_PROMPTS = [
    "The capital of France is",
    "def quicksort(arr):\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the mountains,",
    "1, 2, 3, 5, 8, 13,",
]
N_GREEDY = 64
TOP_K = 5


class Model(L.LlamaModel):
    # cyllama 0.7.0's LlamaContext.get_logits* reads model.n_vocab, which its LlamaModel
    # lacks; supply it.
    @property
    def n_vocab(self):
        return self.get_vocab().n_vocab


def decode(ctx, ids, pos0):
    """Decode `ids` at positions pos0.. in sequence 0, logits for the last one only."""
    batch = L.LlamaBatch(n_tokens=len(ids), embd=0, n_seq_max=1)
    for i, t in enumerate(ids):
        batch.add(t, pos0 + i, [0], i == len(ids) - 1)
    ctx.decode(batch)


def main():
    path, name = sys.argv[1], sys.argv[2]
    tokens_only = "--tokens-only" in sys.argv[3:]
    L.disable_logging()
    L.llama_backend_init()
    model = Model(path, L.LlamaModelParams())
    vocab = model.get_vocab()
    build = json.loads((Path(L.__file__).parent.parent / "build_config.json").read_text())
    version = build["versions"]["llama_cpp_version"]
    header = f"# llama.cpp {version} (PyPI cyllama), {Path(path).name}; made by tools/make_golden.py\n"

    lines = [header]
    for text in TOKENIZE_TEXTS:
        for add_special in (False, True):
            ids = vocab.tokenize(text, add_special=add_special, parse_special=True)
            lines.append(f"text={text.encode().hex()}\tadd_special={int(add_special)}\tids={' '.join(map(str, ids))}\n")
    (OUT / f"{name}.tokens.txt").write_text("".join(lines))
    if tokens_only:
        print(f"wrote {name}.tokens.txt")
        return

    lines = [header, f"# greedy, {N_GREEDY} tokens; topk = llama.cpp's {TOP_K} best tokens and logits at each step\n"]
    for prompt in GREEDY_PROMPTS:
        ids = vocab.tokenize(prompt, add_special=True, parse_special=True)
        cp = L.LlamaContextParams()
        cp.n_ctx = 512
        cp.n_batch = 512
        ctx = L.LlamaContext(model, cp)
        decode(ctx, ids, 0)
        pos = len(ids)
        out, topk = [], []
        for _ in range(N_GREEDY):
            logits = np.array(ctx.get_logits_ith(-1), dtype=np.float32)
            top = np.argsort(logits)[::-1][:TOP_K]
            t = int(top[0])
            out.append(t)
            topk.append(",".join(f"{int(i)}:{logits[i]:.4f}" for i in top))
            decode(ctx, [t], pos)
            pos += 1
        ctx.close()
        lines.append(f"prompt={prompt.encode().hex()}\tids={' '.join(map(str, ids))}\n")
        lines.append(f"output={' '.join(map(str, out))}\n")
        lines.append(f"topk={' '.join(topk)}\n")
    (OUT / f"{name}.greedy.txt").write_text("".join(lines))
    print(f"wrote {name}.tokens.txt and {name}.greedy.txt")


if __name__ == "__main__":
    main()
