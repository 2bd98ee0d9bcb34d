"""An ablation table from finished sweeps: trials grouped by their variant, mean and std over seeds.

A variant is a trial's sampled values without the seed fields (``train.seed``); its rows are
the seeds. The shape is the paper's ablation table (LRSA: with / without each rationale,
dual vs one-way attention vs concatenation), one column per metric::

    python -m sentiray.sweep.ablation runs/lrsa/tune/ablation-rationales runs/lrsa/tune/ablation-attention \
        [--split test] [--metric dev_jmasa_f1]

``--split test`` scores each trial's exported model (its best dev epoch) on that split of the
sweep's data with the family's own metrics, instead of the trials' best dev values. The table
is printed, and logged with a bar plot (mean, std error bars) to the sweep's MLflow run (or to
the active run, when called from code with rows of your own: :func:`aggregate`, :func:`log`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any

SEED_FIELDS = ("train.seed", "data.seed")


def variant_of(hp: dict[str, Any]) -> str:
    """``{"lrsa.rationales": "none", "train.seed": 1}`` -> ``"rationales=none"`` (seeds left out)."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(hp.items()) if k not in SEED_FIELDS]
    return ", ".join(parts) or "base"


def aggregate(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """``rows``: one per trial, ``{"variant": name, "seed": s, metric: value, ...}`` -> one row per
    variant (in first-seen order): ``n`` seeds, and ``<metric>_mean`` / ``<metric>_std`` (sample std,
    0 for a single seed)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    table = []
    for name, members in groups.items():
        entry: dict[str, Any] = {"variant": name, "n": len(members), "seeds": sorted(r.get("seed") for r in members)}
        for metric in metrics:
            values = [
                float(r[metric]) for r in members if r.get(metric) is not None and not math.isnan(float(r[metric]))
            ]
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else float("nan")
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def markdown(table: Sequence[dict[str, Any]], metrics: Sequence[str], percent: bool = True) -> str:
    """The table as markdown: mean ± std per metric (in % when ``percent``)."""
    scale = 100.0 if percent else 1.0
    head = "| variant | seeds | " + " | ".join(metrics) + " |"
    lines = [head, "| --- | --- |" + " --- |" * len(metrics)]
    for row in table:
        cells = [f"{scale * row[f'{m}_mean']:.2f} ± {scale * row[f'{m}_std']:.2f}" for m in metrics]
        lines.append(f"| {row['variant']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: Sequence[dict[str, Any]], metrics: Sequence[str], title: str):
    """Grouped bars: one group per variant, one bar per metric, std as error bars."""
    from sentiray.evaluate.plots import plt

    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(table) * len(metrics)), 4))
    width = 0.8 / max(1, len(metrics))
    for j, metric in enumerate(metrics):
        xs = [i + j * width for i in range(len(table))]
        ax.bar(
            xs,
            [100 * r[f"{metric}_mean"] for r in table],
            width,
            yerr=[100 * r[f"{metric}_std"] for r in table],
            capsize=3,
            label=metric,
        )
    ax.set_xticks(
        [i + width * (len(metrics) - 1) / 2 for i in range(len(table))],
        [r["variant"] for r in table],
        rotation=25,
        ha="right",
    )
    ax.set_ylabel("% (mean over seeds, std bars)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def log(table: Sequence[dict[str, Any]], metrics: Sequence[str], title: str, name: str = "ablation") -> None:
    """The table (markdown + JSON) and its plot into the active MLflow run (a no-op without one)."""
    from sentiray import tracking
    from sentiray.evaluate import plots

    tracking.log_text(f"# {title}\n\n" + markdown(table, metrics), f"{name}/table.md")
    tracking.log_json(list(table), f"{name}/table.json")
    fig = plot(table, metrics, title)
    tracking.log_figure(fig, f"plots/{name}.png")
    plots.close(fig)


# --------------------------------------------------------------------------- from finished sweeps


def sweep_rows(output: str, split: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """One row per completed trial of the sweep at ``output``: its variant, seed and metrics
    (the trial's best dev value, or every metric of ``split`` scored on its exported model)."""
    from sentiray.data import storage
    from sentiray.sweep.driver import SUCCESS

    summary = storage.read_json(storage.join(output, SUCCESS))
    data_uri = _data_uri(summary) if split else None
    rows = []
    for trial in summary["table"]:
        if trial["status"] != "completed":
            continue
        row = {"variant": variant_of(trial["hp"]), "seed": trial["hp"].get("train.seed"), "trial": trial["trial"]}
        if split:
            row.update(_scored(storage.join(trial["output"], "model"), data_uri, split))
        else:
            row[summary["metric"]] = trial["best"]
        rows.append(row)
    return rows, summary.get("mlflow_run_id")


def _data_uri(summary: dict[str, Any]) -> str:
    """The data set of the sweep's trials (from its best.yaml, a complete training job)."""
    import yaml

    from sentiray import config
    from sentiray.data import storage

    cfg = config.validate(yaml.safe_load(storage.read_text(summary["best_config"])), source=summary["best_config"])
    return cfg.resolve(cfg.data.input or cfg.data.output)


def _scored(model_uri: str, data_uri: str, split: str) -> dict[str, float]:
    from sentiray import families
    from sentiray.data import schema, storage
    from sentiray.evaluate.stage import predict_rows

    local = storage.local_copy(model_uri) if storage.is_remote(model_uri) else model_uri
    predictor = families.load_predictor(local)
    rows = schema.read_rows(data_uri, split)
    return predictor.metrics(rows, predict_rows(predictor, rows, 32, desc=f"score {split}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="tune.output of each finished sweep")
    parser.add_argument(
        "--split", help="score each trial's model on this split (e.g. test) instead of its best dev value"
    )
    parser.add_argument("--metric", action="append", help="metric column(s) (default: all the trials report)")
    args = parser.parse_args(argv)
    rows, run_id = [], None
    for output in args.sweeps:
        found, run = sweep_rows(output, args.split)
        rows += found
        run_id = run_id or run
    metrics = args.metric or sorted({k for r in rows for k in r} - {"variant", "seed", "trial"})
    table = aggregate(rows, metrics)
    title = f"ablation over {len({r['seed'] for r in rows})} seed(s)" + (f", {args.split} split" if args.split else "")
    print(markdown(table, metrics))
    if run_id:
        import mlflow

        from sentiray import tracking

        tracking.setup()
        with mlflow.start_run(run_id=run_id):
            log(table, metrics, title)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
