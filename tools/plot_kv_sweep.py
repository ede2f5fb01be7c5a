#!/usr/bin/env python3
"""Plot the tables of `kvedge eval sweep` as PNG: quality against KV memory, one line
per eviction policy (its budgets) and one marker per full-cache storage type. (The sweep
writes its own SVG; a PNG needs a font rasterizer, which matplotlib brings.)

    pip install matplotlib
    python3 tools/plot_kv_sweep.py docs/kv-sweep-ppl-smollm2.md docs/kv-sweep-ppl-smollm2.png "SmolLM2 streaming PPL"

The quality column is `PPL` or `accuracy`; `KV MiB` is the x axis.
"""
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    header = None
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(line.strip()) <= set("|-: "):
            continue
        if header is None:
            header = cells
            continue
        yield dict(zip(header, cells))


def main():
    src, out, title = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
    data = list(rows(src))
    quality = "PPL" if "PPL" in data[0] else "accuracy"
    lines = defaultdict(list)
    points = []
    for r in data:
        method, mib, q = r["method"], float(r["KV MiB"]), float(r[quality])
        if method.startswith("full"):
            points.append((method, mib, q))
        else:
            lines[method.split()[0]].append((mib, q))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    for name, mib, q in points:
        ax.scatter([mib], [q], marker="s", s=50, label=name, zorder=3)
    ax.set_xlabel("KV cache (MiB)")
    ax.set_ylabel("perplexity (lower is better)" if quality == "PPL" else "needle accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
