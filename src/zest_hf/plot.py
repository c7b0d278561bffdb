"""Layer-importance heatmaps: blocks x projection types, coloured by one column, top-k cells numbered."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .targets import CANONICAL_TYPES

__all__ = ["layer_heatmap", "require_matplotlib"]


def require_matplotlib(what: str) -> None:
    """Say which extra to install BEFORE the work whose picture needs matplotlib starts."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"{what} draws its figures with matplotlib, which is not installed: "
                          "pip install 'zest_hf[plot]'")


def layer_heatmap(
    layers: Sequence[dict],
    values: Sequence[float],
    path: str | Path,
    *,
    title: str = "",
    label: str = "",
    top_k: int = 5,
    descending: bool = True,
) -> Path:
    """Write a PNG heatmap of ``values`` (one per layer) laid out as projection type x block.

    Args:
        layers: Dicts with at least ``type`` and ``block`` (a ``ProbeResult.layers`` or ranking's layers).
        values: One number per layer; NaN cells are drawn grey.
        path: Output PNG.
        title / label: Figure title and colour-bar label.
        top_k: Number the ``top_k`` best cells (1 = best) so the selection can be read off the picture.
        descending: Whether larger values are better (for the numbering).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display here or on CI
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    types, blocks, cells = _layout(layers)
    grid = np.full((len(types), len(blocks)), np.nan)
    where = dict(enumerate(cells))
    for cell, v in zip(cells, values):
        grid[cell] = v if v is not None and math.isfinite(v) else np.nan

    finite = grid[np.isfinite(grid)]
    norm = None
    if finite.size and (finite > 0).all() and finite.max() / finite.min() > 100:
        norm = LogNorm(vmin=finite.min(), vmax=finite.max())  # sums over layers of different sizes span decades

    width = min(max(6.0, 0.32 * len(blocks) + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(types) + 1.8))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("lightgrey")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(types)), types)
    step = max(1, len(blocks) // 30)
    ax.set_xticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]])
    ax.set_xlabel("block")
    ax.set_ylabel("projection")
    fig.colorbar(im, ax=ax, label=label)

    order = [i for i in range(len(values)) if values[i] is not None and math.isfinite(values[i])]
    order.sort(key=lambda i: -values[i] if descending else values[i])
    for rank, i in enumerate(order[:top_k], start=1):
        y, x = where[i]
        ax.text(x, y, str(rank), ha="center", va="center", color="white", fontsize=9, fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.15", fc="crimson", ec="none"))
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _layout(layers: Sequence[dict]) -> tuple[list[str], list[int], list[tuple[int, int]]]:
    """``(row labels, blocks, (row, column) of each layer)``: a row per projection type, in canonical order. A block
    may hold two layers of one type (T5's wi_0 and wi_1, a decoder's self- and cross-attention q): each gets a row of
    its own (``"up (2)"``, by name order within the block), so that no cell hides another."""
    kinds = [t for t in CANONICAL_TYPES if any(r["type"] == t for r in layers)]
    kinds += sorted({r["type"] for r in layers} - set(kinds))
    same: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(layers):
        same.setdefault((r["type"], int(r["block"])), []).append(i)
    nth = {}
    for members in same.values():
        for j, i in enumerate(sorted(members, key=lambda i: (str(layers[i].get("name", "")), i))):
            nth[i] = j
    rows = [(t, j) for t in kinds for j in range(max(len(m) for (k, _), m in same.items() if k == t))]
    blocks = sorted({int(r["block"]) for r in layers})
    cells = [(rows.index((r["type"], nth[i])), blocks.index(int(r["block"]))) for i, r in enumerate(layers)]
    return [t if j == 0 else f"{t} ({j + 1})" for t, j in rows], blocks, cells
