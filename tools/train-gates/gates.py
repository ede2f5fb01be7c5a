"""Attention-Gate (Zeng et al., arXiv 2410.12876) for kvedge: the base model's forward
pass in PyTorch, the gate module, the training mask and the gate file format.

The gate module is the one `runtime/src/kernels/kv_gate.rs` runs (read its header for the
design and why): per layer, over the layer's normalized hidden states x,
    q, k, v = Wq x, Wk x, Wv x            (heads * head_dim each, no bias, no RoPE)
    o = causal softmax attention over a sliding window of `window` positions
    score = sigmoid(Wo o + bo)            (one per KV head); keep when score > threshold.

Training mask (what a later query may see): key j is visible to query i >= j when j is a
sink (j < sinks), is recent (i - j < recent), or its gate keeps it. The hard keep flag
goes forward, the sigmoid's gradient comes back (straight-through estimator, as the paper
does), and the attention weights are renormalized over the visible keys.

The model forward follows kvedge's llama/qwen2 pass (`models/src/llama/mod.rs`): RMSNorm,
RoPE (adjacent pairs for llama, halves for qwen2), grouped-query attention, SwiGLU,
tied or untied output. Weights come dequantized from the GGUF by the PyPI `gguf` package.
"""

import math

import gguf
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GATE_ARCH = "kvedge-gate"
PREFIX = "kvedge.gate"


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _raw(reader, name):
    for t in reader.tensors:
        if t.name == name:
            return t
    raise KeyError(f"tensor {name} not in the model")


def _weight(reader, name):
    t = _raw(reader, name)
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = [int(d) for d in reversed(t.shape)]
    return torch.from_numpy(np.ascontiguousarray(a.reshape(shape)))


class BaseModel:
    """A llama/qwen2 GGUF, dequantized to f32 torch tensors (frozen)."""

    def __init__(self, path):
        r = gguf.GGUFReader(path)
        self.reader = r
        self.path = str(path)
        arch = _field(r, "general.architecture")
        if arch not in ("llama", "qwen2"):
            raise ValueError(f"{path}: architecture {arch!r}: expected llama or qwen2")
        self.arch = arch
        self.name = _field(r, "general.name", "")
        k = lambda s, d=None: _field(r, f"{arch}.{s}", d)
        self.n_layers = int(k("block_count"))
        self.n_embd = int(k("embedding_length"))
        self.n_heads = int(k("attention.head_count"))
        self.n_kv_heads = int(k("attention.head_count_kv", self.n_heads))
        self.head_dim = int(k("attention.key_length", self.n_embd // self.n_heads))
        self.rope_dims = int(k("rope.dimension_count", self.head_dim))
        self.rope_base = float(k("rope.freq_base", 10000.0))
        self.eps = float(k("attention.layer_norm_rms_epsilon", 1e-5))
        self.emb = _weight(r, "token_embd.weight")
        self.n_vocab = self.emb.shape[0]
        names = {t.name for t in r.tensors}
        self.out = _weight(r, "output.weight") if "output.weight" in names else self.emb
        self.out_norm = _weight(r, "output_norm.weight")
        self.layers = []
        for l in range(self.n_layers):
            w = lambda n: _weight(r, f"blk.{l}.{n}")
            layer = {n: w(f"{n}.weight") for n in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
            for b in ("attn_q", "attn_k", "attn_v"):
                if f"blk.{l}.{b}.bias" in names:
                    layer[b + ".bias"] = w(f"{b}.bias")
            self.layers.append(layer)

    def fingerprint(self):
        """FNV-1a 64 of the architecture, shape and a few tensors' bytes (`models/src/gate.rs`)."""
        h = 0xCBF29CE484222325
        def eat(b):
            nonlocal h
            for x in b:
                h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        eat(self.arch.encode())
        for v in (self.n_layers, self.n_embd, self.n_heads, self.n_kv_heads,
                  self.head_dim, self.n_vocab):
            eat(int(v).to_bytes(8, "little"))
        for name, most in (("output_norm.weight", None), ("blk.0.attn_norm.weight", None),
                           ("blk.0.attn_k.weight", 4096)):
            b = _raw(self.reader, name).data.tobytes()
            eat(b if most is None else b[:most])
        return f"{h:016x}"

    def rope(self, x, pos):
        """x: [B, T, H, D]; rotate the first rope_dims dims at positions pos [T]."""
        n = self.rope_dims
        inv = self.rope_base ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)
        ang = pos.double()[:, None] * inv[None, :]
        cos = torch.cos(ang).float()[None, :, None, :]
        sin = torch.sin(ang).float()[None, :, None, :]
        rot, rest = x[..., :n], x[..., n:]
        if self.arch == "llama":
            a, b = rot[..., 0::2], rot[..., 1::2]
            y = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        else:
            a, b = rot[..., : n // 2], rot[..., n // 2:]
            y = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return torch.cat((y, rest), dim=-1)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Gate(nn.Module):
    """One layer's gate."""

    def __init__(self, n_embd, heads, head_dim, n_kv_heads, window, init_bias):
        super().__init__()
        hd = heads * head_dim
        self.heads, self.head_dim, self.window = heads, head_dim, window
        self.q = nn.Linear(n_embd, hd, bias=False)
        self.k = nn.Linear(n_embd, hd, bias=False)
        self.v = nn.Linear(n_embd, hd, bias=False)
        self.out = nn.Linear(hd, n_kv_heads)
        for m in (self.q, self.k, self.v):
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(n_embd))
        nn.init.normal_(self.out.weight, std=0.1 / math.sqrt(hd))
        nn.init.constant_(self.out.bias, init_bias)

    def forward(self, xn):
        """xn: [B, T, n_embd] -> scores [B, T, n_kv_heads]."""
        B, T, _ = xn.shape
        H, D = self.heads, self.head_dim
        q = self.q(xn).view(B, T, H, D).transpose(1, 2)
        k = self.k(xn).view(B, T, H, D).transpose(1, 2)
        v = self.v(xn).view(B, T, H, D).transpose(1, 2)
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        allowed = (j <= i) & (i - j < self.window)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        s = s.masked_fill(~allowed, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        o = o.transpose(1, 2).reshape(B, T, H * D)
        return torch.sigmoid(self.out(o))


class Gates(nn.Module):
    def __init__(self, model, heads=2, head_dim=8, window=64, threshold=0.5, init_bias=2.0):
        super().__init__()
        self.heads, self.head_dim, self.window, self.threshold = heads, head_dim, window, threshold
        self.layers = nn.ModuleList(
            Gate(model.n_embd, heads, head_dim, model.n_kv_heads, window, init_bias)
            for _ in range(model.n_layers))


def forward(model, tokens, gates=None, mask=None, f16_kv=False):
    """Logits [B, T, vocab] of tokens [B, T] at positions 0..T-1, and the gate scores per
    layer ([B, T, n_kv_heads] each, empty without gates).

    mask: None (every causal key visible: the forward kvedge runs before any eviction),
    or (sinks, recent) for the training mask above. f16_kv rounds K and V to f16, as
    kvedge's cache stores them (the parity fixture)."""
    B, T = tokens.shape
    H, KV, D = model.n_heads, model.n_kv_heads, model.head_dim
    x = model.emb[tokens]
    pos = torch.arange(T)
    i = pos[:, None]
    j = pos[None, :]
    causal = j <= i
    scores = []
    for l, w in enumerate(model.layers):
        xn = rmsnorm(x, w["attn_norm"], model.eps)
        q = xn @ w["attn_q"].T
        k = xn @ w["attn_k"].T
        v = xn @ w["attn_v"].T
        if "attn_q.bias" in w:
            q, k, v = q + w["attn_q.bias"], k + w["attn_k.bias"], v + w["attn_v.bias"]
        q = model.rope(q.view(B, T, H, D), pos).transpose(1, 2)
        k = model.rope(k.view(B, T, KV, D), pos).transpose(1, 2)
        v = v.view(B, T, KV, D).transpose(1, 2)
        if f16_kv:
            k, v = k.half().float(), v.half().float()
        rep = H // KV
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        logits = logits.masked_fill(~causal, float("-inf"))
        if gates is not None:
            s = gates.layers[l](xn)
            scores.append(s)
        if gates is not None and mask is not None:
            sinks, recent = mask
            hard = (s > gates.threshold).float()
            keep = hard + s - s.detach()  # straight-through
            keep = keep.transpose(1, 2).repeat_interleave(rep, dim=1)  # [B, H, T]
            protect = ((j < sinks) | (i - j < recent)).float()  # [T, T]
            vis = protect + (1 - protect) * keep[:, :, None, :]
            p = torch.exp(logits - logits.amax(-1, keepdim=True)) * vis
            att = p / p.sum(-1, keepdim=True)
        else:
            att = torch.softmax(logits, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        x = x + o @ w["attn_output"].T
        xn = rmsnorm(x, w["ffn_norm"], model.eps)
        x = x + (F.silu(xn @ w["ffn_gate"].T) * (xn @ w["ffn_up"].T)) @ w["ffn_down"].T
    x = rmsnorm(x, model.out_norm, model.eps)
    return x @ model.out.T, scores


def write_gate_file(path, model, gates, meta):
    """The gate file `models/src/gate.rs` reads: matrices in f16, the bias in f32."""
    w = gguf.GGUFWriter(str(path), GATE_ARCH)
    w.add_name(f"Attention-Gate for {model.name}")
    u = lambda k, v: w.add_uint32(f"{PREFIX}.{k}", int(v))
    f = lambda k, v: w.add_float32(f"{PREFIX}.{k}", float(v))
    u("heads", gates.heads)
    u("head_dim", gates.head_dim)
    u("window", gates.window)
    u("n_layers", model.n_layers)
    u("n_embd", model.n_embd)
    u("n_kv_heads", model.n_kv_heads)
    f("threshold", gates.threshold)
    w.add_string(f"{PREFIX}.model_name", model.name)
    w.add_string(f"{PREFIX}.model_fingerprint", model.fingerprint())
    for k, v in meta.items():
        if isinstance(v, str):
            w.add_string(f"{PREFIX}.{k}", v)
        elif isinstance(v, int):
            w.add_uint32(f"{PREFIX}.{k}", v)
        else:
            f(k, v)
    for l, g in enumerate(gates.layers):
        for n, t in (("q.weight", g.q.weight), ("k.weight", g.k.weight),
                     ("v.weight", g.v.weight), ("out.weight", g.out.weight)):
            w.add_tensor(f"blk.{l}.attn_gate_{n}", t.detach().numpy().astype(np.float16))
        w.add_tensor(f"blk.{l}.attn_gate_out.bias", g.out.bias.detach().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def round_to_f16(gates):
    """Round the gate matrices to f16 in place: what the gate file stores, so the trainer's
    forward after saving equals the runtime's."""
    with torch.no_grad():
        for g in gates.layers:
            for m in (g.q, g.k, g.v, g.out):
                m.weight.copy_(m.weight.half().float())


def read_gate_file(path, model):
    """Gates from a gate file (the inverse of write_gate_file), checked against model."""
    r = gguf.GGUFReader(str(path))
    meta = lambda k: _field(r, f"{PREFIX}.{k}")
    if meta("model_fingerprint") != model.fingerprint():
        raise ValueError(f"{path}: gates for {meta('model_name')!r}, not {model.path}")
    gates = Gates(model, heads=int(meta("heads")), head_dim=int(meta("head_dim")),
                  window=int(meta("window")), threshold=float(meta("threshold")))
    with torch.no_grad():
        for l, g in enumerate(gates.layers):
            for n, m in (("q", g.q), ("k", g.k), ("v", g.v), ("out", g.out)):
                m.weight.copy_(_weight(r, f"blk.{l}.attn_gate_{n}.weight"))
            g.out.bias.copy_(_weight(r, f"blk.{l}.attn_gate_out.bias"))
    return gates
