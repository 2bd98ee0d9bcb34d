"""Plots people would rather look at than numbers: loss curves, confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402


def curves(series: dict[str, Sequence[tuple[int, float]]], title: str, ylabel: str = "value"):
    """One line per named series of (step, value) points."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        if points:
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    return fig


def confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str):
    """A confusion matrix with counts in the cells (rows: gold, columns: predicted)."""
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
