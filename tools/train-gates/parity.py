"""The trainer/runtime parity fixture (`tests/data/gate/`): for each tiny synthetic model
(`tiny-llama.gguf`, `tiny-qwen2.gguf`, written by `kvedge synth`, see README.md), random
gates written as a gate file, and what this trainer's forward gives with them: the logits
of every token and every layer's gate scores. `tests/gate.rs` runs kvedge's CPU forward
with the same gate file and holds it to these numbers (CI needs no PyTorch).

    python tools/train-gates/parity.py            # write the fixture
    python tools/train-gates/parity.py --check    # recompute from the committed files, compare

Expected file (`tiny-ARCH-expected.bin`, little-endian): u32 T, V, L, KV; u32 tokens[T];
f32 logits[T][V]; f32 scores[L][T][KV].
"""

import argparse
import pathlib
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import gates as G  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "gate"
T = 40


def expected(model, gates, tokens):
    with torch.no_grad():
        logits, scores = G.forward(model, tokens[None, :], gates=gates, f16_kv=True)
    return logits[0].numpy(), np.stack([s[0].numpy() for s in scores])


def write_expected(path, tokens, logits, scores):
    with open(path, "wb") as f:
        f.write(struct.pack("<4I", T, logits.shape[1], scores.shape[0], scores.shape[2]))
        f.write(tokens.numpy().astype("<u4").tobytes())
        f.write(logits.astype("<f4").tobytes())
        f.write(scores.astype("<f4").tobytes())


def read_expected(path):
    b = path.read_bytes()
    t, v, l, kv = struct.unpack_from("<4I", b)
    o = 16
    tokens = np.frombuffer(b, "<u4", t, o).astype(np.int64)
    o += 4 * t
    logits = np.frombuffer(b, "<f4", t * v, o).reshape(t, v)
    o += 4 * t * v
    scores = np.frombuffer(b, "<f4", l * t * kv, o).reshape(l, t, kv)
    return torch.from_numpy(tokens), logits, scores


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    worst = 0.0
    for arch in ("llama", "qwen2"):
        model = G.BaseModel(DATA / f"tiny-{arch}.gguf")
        gfile = DATA / f"tiny-{arch}-gates.gguf"
        efile = DATA / f"tiny-{arch}-expected.bin"
        if args.check:
            gates = G.read_gate_file(gfile, model)
            tokens, want_logits, want_scores = read_expected(efile)
            logits, scores = expected(model, gates, tokens)
            err = max(np.abs(logits - want_logits).max(), np.abs(scores - want_scores).max())
            worst = max(worst, err)
            print(f"{arch}: max difference {err:.3g}")
            continue
        torch.manual_seed(5)
        gates = G.Gates(model, heads=2, head_dim=4, window=8, threshold=0.5, init_bias=0.0)
        with torch.no_grad():
            for g in gates.layers:
                torch.nn.init.normal_(g.out.weight, std=2.0)
        G.round_to_f16(gates)
        G.write_gate_file(gfile, model, gates, {"target_keep": 0.5, "kept_fraction": 0.5,
                                                "note": "random gates: parity fixture"})
        tokens = torch.randint(0, model.n_vocab, (T,), generator=torch.Generator().manual_seed(9))
        logits, scores = expected(model, gates, tokens)
        write_expected(efile, tokens, logits, scores)
        kept = (scores > 0.5).mean()
        print(f"{arch}: wrote {gfile.name} and {efile.name} ({T} tokens, kept {kept:.2f})")
    if args.check and worst > 1e-4:
        sys.exit(f"parity fixture differs from this trainer by {worst:.3g} (> 1e-4)")


if __name__ == "__main__":
    main()
