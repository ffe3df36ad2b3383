"""Plots of a run: accuracy matrices as heatmaps and the ID/OOD summary as bars (PNG)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

from fedoa.io import atomic_write

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

if TYPE_CHECKING:
    from fedoa.reports.results import Results


def plot_run(results: Results, path: Path) -> Path:
    kinds = list(results.matrices)
    sets = list(results.test_sets)
    clients = results.clients
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 3.8))
    for ax, kind in zip(axes, kinds):
        grid = [[results.matrices[kind][c].get(s, math.nan) for s in sets] for c in clients]
        grid = [[math.nan if v is None else 100 * v for v in row] for row in grid]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(sets)), sets, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(clients)), clients, fontsize=8)
        ax.set_title(f"{kind} model")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=axes[len(kinds) - 1], fraction=0.046)
    ax = axes[-1]
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        s = results.summary[kind]
        vals = [100 * (s["id_accuracy"] or 0), 100 * (s["ood_accuracy"] or 0)]
        ax.bar([x + k * width for x in range(2)], vals, width, label=kind)
    ax.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(2)], ["ID", "OOD"])
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=8)
    ax.set_title(results.method)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write the figure atomically (a crash never leaves half a PNG)."""
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
