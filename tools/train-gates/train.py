"""Train Attention-Gates (arXiv 2410.12876) for a GGUF model and write the gate file
kvedge loads with `--kv-policy gate --kv-gates FILE`.

The base model is frozen (dequantized from the GGUF); only the gates learn. Loss: the
language-modelling cross-entropy under the training mask of `gates.forward` (hard flags
forward, sigmoid gradient back) plus lam * (kept - target)^2, where kept is the fraction
of keys (past the sinks, over layers and KV heads) the gates keep, by the same
straight-through flags.

Text: token ids from `kvedge tokenize` (the same tokenizer and text the evaluations use).
The first --holdout tokens are never trained on: the streaming-perplexity evaluation reads
the start of the essays. Windows of --seq tokens are drawn at random from the rest.

    kvedge tokenize -m models/cache/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --text models/cache/PaulGrahamEssays -o /tmp/pg.tok
    python tools/train-gates/train.py -m models/cache/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --tokens /tmp/pg.tok -o gates/SmolLM2-135M-Instruct.gates.gguf
"""

import argparse
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import gates as G  # noqa: E402


def kept_fraction(scores, threshold, sinks, soft=False):
    """Fraction of keys past the sinks that the gates keep (STE flags when soft)."""
    fr = []
    for s in scores:
        s = s[:, sinks:, :]
        hard = (s > threshold).float()
        fr.append((hard + s - s.detach()).mean() if soft else hard.mean())
    return torch.stack(fr).mean()


def evaluate(model, gates, data, args):
    """Held-out loss with and without the gates' mask, and their kept fraction."""
    n = args.seq
    starts = range(0, min(len(data) - n - 1, args.eval_tokens), n)
    out = {"loss_full": 0.0, "loss_gated": 0.0, "kept": 0.0}
    with torch.no_grad():
        for s in starts:
            x = torch.from_numpy(data[s:s + n].astype(np.int64))[None, :]
            full, _ = G.forward(model, x)
            gated, scores = G.forward(model, x, gates, mask=(args.sinks, args.recent))
            y = x[0, 1:]
            out["loss_full"] += F.cross_entropy(full[0, :-1], y).item()
            out["loss_gated"] += F.cross_entropy(gated[0, :-1], y).item()
            out["kept"] += kept_fraction(scores, gates.threshold, args.sinks).item()
    return {k: v / len(starts) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--tokens", required=True, help="little-endian u32 ids from kvedge tokenize")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--holdout", type=int, default=16384,
                    help="leading tokens never trained on (evaluation text)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--time-limit", type=float, default=0, help="seconds; 0: none")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--target-keep", type=float, default=0.2)
    ap.add_argument("--lam", type=float, default=10.0)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=8)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--init-bias", type=float, default=0.5,
                    help="initial output bias: sigmoid(0.5) = 0.62 keeps every token at first")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--recent", type=int, default=16)
    ap.add_argument("--eval-tokens", type=int, default=2048,
                    help="held-out tokens for the loss and kept fraction report")
    ap.add_argument("--init", help="start from this gate file (same model) instead of random gates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    model = G.BaseModel(args.model)
    data = np.fromfile(args.tokens, dtype="<u4")
    if len(data) < args.holdout + 4 * args.seq:
        sys.exit(f"{args.tokens}: {len(data)} tokens, need more than --holdout {args.holdout} "
                 f"+ 4 windows of {args.seq}")
    held, train = data[:args.holdout], data[args.holdout:]
    if args.init:
        gates = G.read_gate_file(args.init, model)
    else:
        gates = G.Gates(model, args.heads, args.head_dim, args.window, args.threshold,
                        args.init_bias)
    opt = torch.optim.AdamW(gates.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    print(f"model {model.name}: {model.n_layers} layers; gates "
          f"{sum(p.numel() for p in gates.parameters())} parameters; "
          f"{len(train)} training tokens, {len(held)} held out; loaded in {time.time() - t0:.0f} s",
          flush=True)
    t_train = time.time()
    step = 0
    for step in range(1, args.steps + 1):
        starts = rng.integers(0, len(train) - args.seq - 1, args.batch)
        x = torch.from_numpy(np.stack([train[s:s + args.seq] for s in starts]).astype(np.int64))
        logits, scores = G.forward(model, x, gates, mask=(args.sinks, args.recent))
        lm = F.cross_entropy(logits[:, :-1].reshape(-1, model.n_vocab), x[:, 1:].reshape(-1))
        kept = kept_fraction(scores, args.threshold, args.sinks, soft=True)
        loss = lm + args.lam * (kept - args.target_keep) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step}: lm {lm.item():.4f} kept {kept.item():.3f} "
                  f"({time.time() - t_train:.0f} s)", flush=True)
        if args.time_limit and time.time() - t_train > args.time_limit:
            print(f"time limit reached at step {step}", flush=True)
            break
    train_s = time.time() - t_train
    G.round_to_f16(gates)
    ev = evaluate(model, gates, held, args)
    print(f"held-out ({args.eval_tokens} tokens): loss full {ev['loss_full']:.4f}, gated "
          f"{ev['loss_gated']:.4f}, kept {ev['kept']:.3f}", flush=True)
    meta = {
        "target_keep": args.target_keep,
        "kept_fraction": ev["kept"],
        "train.steps": step,
        "train.seconds": train_s,
        "train.seq": args.seq,
        "train.batch": args.batch,
        "train.lr": args.lr,
        "train.lam": args.lam,
        "train.sinks": args.sinks,
        "train.recent": args.recent,
        "train.holdout": args.holdout,
        "train.heldout_loss_full": ev["loss_full"],
        "train.heldout_loss_gated": ev["loss_gated"],
        "train.command": " ".join(sys.argv),
    }
    G.write_gate_file(args.out, model, gates, meta)
    size = pathlib.Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size} bytes) after {step} steps, {train_s:.0f} s", flush=True)


if __name__ == "__main__":
    main()
