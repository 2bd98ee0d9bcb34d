"""Sweep plots: the metric against each hyperparameter, and every trial's learning curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sentiray.evaluate import plots

plt = plots.plt  # Agg backend, set once in evaluate.plots

# How each trial's fate is drawn: filled = trained to the end, hollow = stopped by ASHA.
_STYLE = {
    "completed": {"marker": "o", "facecolors": "tab:blue", "edgecolors": "tab:blue"},
    "early_stopped": {"marker": "o", "facecolors": "none", "edgecolors": "tab:gray"},
    "error": {"marker": "x", "facecolors": "tab:red", "edgecolors": "tab:red"},
}


def metric_vs_params(rows: Sequence[dict[str, Any]], params: Sequence[str], metric: str, log_params: set[str]):
    """One panel per hyperparameter: each trial's best ``metric`` against its value.

    ``rows``: one dict per trial with ``status``, ``best`` (None when it never reported),
    ``is_best`` and ``hp``, its hyperparameter values keyed by name.
    """
    cols = min(3, len(params)) or 1
    nrows = math.ceil(len(params) / cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, params):
        values = [row["hp"][name] for row in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            position = {v: v for v in values}
        else:  # categories (strings, lists, booleans) at evenly spaced ticks
            labels = sorted({str(v) for v in values})
            position = {label: i for i, label in enumerate(labels)}
            ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        for status, style in _STYLE.items():
            pts = [
                (position[v if numeric else str(v)], row["best"])
                for v, row in zip(values, rows)
                if row["status"] == status and row["best"] is not None
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=36, label=status.replace("_", " "), **style)
        best = [(position[v if numeric else str(v)], row["best"]) for v, row in zip(values, rows) if row["is_best"]]
        if best:
            ax.scatter(*zip(*best), marker="*", s=220, facecolors="gold", edgecolors="black", zorder=3, label="best")
        if numeric and name in log_params:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"best {metric} of each trial against each hyperparameter")
    fig.tight_layout()
    return fig


def learning_curves(histories: dict[str, list[tuple[int, float]]], metric: str, stopped: set[str], best: str | None):
    """``metric`` per epoch, one line per trial; ASHA-stopped trials dashed, the best one thick."""
    fig = plots.curves({}, f"{metric} per epoch, every trial", metric)
    ax = fig.axes[0]
    for trial, points in sorted(histories.items()):
        if not points:
            continue
        epochs, values = zip(*sorted(points))
        label = trial + (" (stopped)" if trial in stopped else "") + (" best" if trial == best else "")
        ax.plot(
            epochs,
            values,
            marker=".",
            linestyle="--" if trial in stopped else "-",
            linewidth=3 if trial == best else 1.2,
            label=label,
        )
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if histories:
        ax.legend(fontsize=7, ncol=2 if len(histories) > 8 else 1)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plots.close(fig)
