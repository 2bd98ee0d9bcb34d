"""``sentiray score --task TASK FILE [--json]``: the field's metrics of any predictions file.

FILE is JSONL, one object per line: ``{"pred": ..., "label": ...}`` (labels or class
indices; floats for regression) or, for span tasks, ``{"pred": [[start, end, polarity],
...], "gold": [...]}``. Every family's evaluation writes its ``predictions.jsonl`` in this
format (plus an ``id``), and computes its metrics through :func:`score`, so rescoring an
evaluation here gives the very numbers of its report.

Metric values are fractions (0.8512), not percentages.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sentiray.data.schema import DataError
from sentiray.evaluate import regression, spans

# task -> (lines, labels) -> {metric: value}
Scorer = Callable[[list[dict[str, Any]], Sequence[str] | None], dict[str, float]]


def _golds(lines: list[dict[str, Any]]) -> list[Any]:
    key = "label" if "label" in lines[0] else "gold"
    return [line[key] for line in lines]


def classification_scores(lines: list[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, float]:
    """``accuracy``, ``macro_f1``, ``weighted_f1`` as scikit-learn computes them.

    The classes averaged over are those of the gold labels and the predictions (sklearn's
    default); a missing prediction (null: unparseable) counts as wrong without adding a
    class of its own.
    """
    from sklearn.metrics import accuracy_score, f1_score

    golds = _golds(lines)
    preds = [line["pred"] for line in lines]
    classes = sorted({g for g in golds} | {p for p in preds if p is not None}, key=str)
    missing = object()
    preds_ = [missing if p is None else p for p in preds]
    if any(p is missing for p in preds_):  # a value no class equals: wrong, and in no class's counts
        sentinel = "<unparseable>" if all(isinstance(c, str) for c in classes) else -(10**9)
        preds_ = [sentinel if p is missing else p for p in preds_]
    return {
        "accuracy": float(accuracy_score(golds, preds_)),
        "macro_f1": float(f1_score(golds, preds_, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(golds, preds_, labels=classes, average="weighted", zero_division=0)),
    }


SCORERS: dict[str, Scorer] = {
    "msc": classification_scores,
    "masc": spans.masc_scores,  # sklearn's three + VLP-MABSA's masc_acc / masc_f1
    "mabsa": spans.span_scores,  # VLP-MABSA's jmasa_*, mate_*, masc_* over spans
    # MMSA / MSE-Adapter arithmetic (evaluate/regression.py): {"pred": float, "label": float}
    # lines for mosi..simsv2, labels or class indices for meld / cherma.
    **{
        name: regression.scorer(kind)
        for name, kind in (("mosi", "mosei"), ("mosei", "mosei"), ("sims", "sims"), ("simsv2", "simsv2"))
    },
    "meld": regression.scorer("meld", regression.MELD_LABELS),
    "cherma": regression.scorer("cherma", regression.CHERMA_LABELS),
}


def tasks() -> list[str]:
    return sorted(SCORERS)


def score(task: str, lines: list[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics of ``task`` over prediction lines (see the module doc for their shape)."""
    if task not in SCORERS:
        raise DataError(f"no metrics for task {task!r}; known: {', '.join(tasks())}")
    if not lines:
        raise DataError("no predictions to score")
    return SCORERS[task](lines, labels)


def read_predictions(path: str) -> list[dict[str, Any]]:
    """The lines of a JSONL predictions file (local or s3://); a bad line raises naming it."""
    from sentiray.data import storage

    lines = []
    for number, text in enumerate(storage.read_text(path).splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(line, dict) or "pred" not in line or not ({"label", "gold"} & set(line)):
            raise DataError(f"{path}:{number}: each line needs 'pred' and 'label' (or 'gold'), got {text[:120]}")
        lines.append(line)
    return lines


def cmd_score(args: argparse.Namespace) -> int:
    values = score(args.task, read_predictions(args.file))
    if args.json:
        print(json.dumps(values, sort_keys=True))
    else:
        width = max(len(k) for k in values)
        for name, value in values.items():
            print(f"{name:<{width}}  {value:.4f}")
    return 0


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score",
        help="the field's metrics of a predictions file (JSONL)",
        description="Score a JSONL predictions file with the metrics the field reports for TASK. Lines: "
        '{"pred": ..., "label": ...}, or for span tasks {"pred": [[start, end, polarity], ...], "gold": [...]}.',
    )
    p.add_argument("--task", required=True, help=f"one of: {', '.join(tasks())}")
    p.add_argument("file", help="predictions.jsonl (e.g. the one `sentiray evaluate` writes)")
    p.add_argument("--json", action="store_true", help="print one JSON object of metric name -> value")
    p.set_defaults(func=cmd_score)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cmd_score(argparse.Namespace(task=sys.argv[1], file=sys.argv[2], json=True)))
