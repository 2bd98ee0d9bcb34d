"""A sweep's seed grid summarised: mean and standard deviation of every dev metric over the
trials that share all their other values (the papers' "5 seeds averaged").

A sweep whose search space varies ``train.seed`` (e.g. ``train.seed: {grid: [0, 1, 2, 3, 4]}``,
one trial per seed, each an MLflow child run) gets one group per setting of the other swept
values. Each trial contributes the dev metrics of its best epoch by ``tune.metric`` (the epoch
whose model it exported); the standard deviation is the sample one (n - 1), 0 for one trial.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sentiray.data import storage

SEED_KEY = "train.seed"
EPOCHS = "_epochs.json"


def _best_epoch_metrics(row: dict[str, Any]) -> dict[str, float] | None:
    uri = storage.join(row["output"], EPOCHS)
    if row.get("best_epoch") is None or not storage.exists(uri):
        return None
    for record in storage.read_json(uri):
        if record.get("epoch") == row["best_epoch"]:
            return {
                k: float(v)
                for k, v in record.items()
                if k.startswith("dev_") and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
    return None


def aggregate(rows: list[dict[str, Any]], key: str = SEED_KEY) -> list[dict[str, Any]]:
    """One entry per group of trials differing only in ``key``: its values, seeds and
    ``{metric: {mean, std, n}}``; empty when ``key`` is not swept."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        if key not in row["hp"]:
            return []
        metrics = _best_epoch_metrics(row)
        if metrics is None:
            continue
        others = {k: v for k, v in sorted(row["hp"].items()) if k != key}
        group = groups.setdefault(
            json.dumps(others, sort_keys=True, default=str),
            {"values": others, "seeds": [], "trials": [], "per_trial": []},
        )
        group["seeds"].append(row["hp"][key])
        group["trials"].append(row["trial"])
        group["per_trial"].append(metrics)
    out = []
    for group in groups.values():
        per_trial = group.pop("per_trial")
        stats = {}
        for name in sorted(set().union(*per_trial)):
            values = [m[name] for m in per_trial if name in m and not math.isnan(m[name])]
            n = len(values)
            mean = sum(values) / n if n else float("nan")
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
            stats[name] = {"mean": mean, "std": std, "n": n}
        out.append({**group, "metrics": stats})
    return out


def format_table(groups: list[dict[str, Any]]) -> str:
    """Per group: ``metric  mean ± std  (n)``, one line per dev metric."""
    lines = []
    for group in groups:
        values = ", ".join(f"{k}={v}" for k, v in group["values"].items()) or "(no other swept values)"
        lines.append(f"{values}: seeds {group['seeds']}")
        width = max((len(m) for m in group["metrics"]), default=0)
        for name, s in group["metrics"].items():
            lines.append(f"  {name:<{width}}  {s['mean']:.4f} ± {s['std']:.4f}  (n={s['n']})")
    return "\n".join(lines)
