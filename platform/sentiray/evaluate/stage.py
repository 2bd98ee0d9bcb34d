"""Stage ``evaluate``: a trained model's predictions on a split, scored as its field scores them.

Any family: the model folder's manifest names the family, whose predictor predicts (in
batches, with progress) and whose report holds the metrics (the same arithmetic as
``sentiray score``) and plots. Writes to ``evaluate.output``:

- ``predictions.jsonl``: one line per row in ``sentiray score``'s format (``id``, ``pred``,
  ``label``/``gold``) plus the family's extra fields (probabilities, chains, ...), so
  ``sentiray score --task TASK predictions.jsonl`` gives the report's metrics again;
- ``report.md``, the plots (PNG), and ``report.json`` last (its presence says the report is
  complete; ``sentiray pipeline`` skips on it).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from sentiray import tracking
from sentiray.config import EvaluateConfig, JobConfig
from sentiray.data import schema, storage

REPORT = "report.json"


def predict_rows(
    predictor,
    rows: list[dict[str, Any]],
    batch_size: int,
    options: dict[str, Any] | None = None,
    desc: str = "evaluate",
) -> list[dict[str, Any]]:
    """``predictor.predict`` over ``rows`` in batches, with a progress bar (rows/s, ETA)."""
    out: list[dict[str, Any]] = []
    from sentiray import console

    bar = console.progress(len(rows), desc, unit="row")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        out += predictor.predict(chunk, options)
        bar.update(len(chunk))
    bar.close()
    return out


def prediction_lines(predictor, rows, predictions) -> list[dict[str, Any]]:
    """``predictions.jsonl``: the score format first, then the family's own fields."""
    lines = []
    for row, pred in zip(rows, predictions):
        scored = predictor.scored(row, pred)
        lines.append({**scored, **{k: v for k, v in pred.items() if k not in scored}})
    return lines


def report_markdown(predictor, report: dict[str, Any]) -> str:
    head = [
        f"# Evaluation of {report['model']}",
        "",
        f"family `{report['family']}`, task `{report['task']}`; data `{report['data']}` split `{report['split']}`, "
        f"{report['n']} samples, {report['seconds']:.1f} s",
        "",
    ]
    body = predictor.report_markdown(report) if hasattr(predictor, "report_markdown") else ""
    if not body:
        body = "| metric | value |\n| --- | --- |\n" + "".join(
            f"| {k} | {v:.4f} |\n" for k, v in report["metrics"].items()
        )
    return "\n".join(head) + body


def run(cfg: JobConfig) -> dict[str, Any]:
    from sentiray import families
    from sentiray.models.registry import resolve_model_uri

    ecfg = cfg.evaluate or EvaluateConfig()
    data_uri = cfg.resolve(cfg.data.input or cfg.data.output)
    rows = schema.read_rows(data_uri, ecfg.split)
    if ecfg.limit:
        rows = rows[: ecfg.limit]
    if not rows:
        raise schema.DataError(f"split {ecfg.split!r} of {data_uri} is empty")
    model_uri = cfg.model.path if cfg.model.path.startswith(("models:/", "runs:/")) else cfg.resolve(cfg.model.path)
    out_uri = cfg.resolve(ecfg.output)

    with tracking.stage_run(cfg, "evaluate"):
        start = time.perf_counter()
        predictor = families.load_predictor(resolve_model_uri(model_uri))
        task = rows[0]["task"]
        if task != predictor.task and not _compatible(task, predictor.task):
            raise schema.DataError(f"the model was trained for task {predictor.task!r}; {data_uri} holds {task!r}")
        options = predictor.evaluate_options(cfg) if hasattr(predictor, "evaluate_options") else {}
        predictions = predict_rows(predictor, rows, ecfg.batch_size, options)
        report: dict[str, Any] = {
            "model": model_uri,
            "data": data_uri,
            "split": ecfg.split,
            "task": predictor.task,
            "family": predictor.manifest.get("family"),
            "n": len(rows),
        }
        report.update(predictor.report(rows, predictions, options))
        report["seconds"] = time.perf_counter() - start
        _write_outputs(predictor, report, prediction_lines(predictor, rows, predictions), rows, predictions, out_uri)
        tracking.log_metrics(report["metrics"])
    print(report_markdown(predictor, report))
    print(f"evaluate: report in {out_uri}")
    return {"output": out_uri, "metrics": report["metrics"], "report": report}


def _compatible(data_task: str, model_task: str) -> bool:
    # one sentiment vocabulary: a post-level model answers aspect rows and back
    return {data_task, model_task} <= {"msc", "masc"}


def _write_outputs(predictor, report, lines, rows, predictions, out_uri: str) -> None:
    markdown = report_markdown(predictor, report)
    jsonl = "".join(json.dumps(line, default=str) + "\n" for line in lines)
    storage.write_text(storage.join(out_uri, "report.md"), markdown)
    storage.write_text(storage.join(out_uri, "predictions.jsonl"), jsonl)
    from sentiray.evaluate import plots

    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in predictor.plots(rows, predictions, report).items():
            png = os.path.join(tmp, name)
            fig.savefig(png, dpi=120, bbox_inches="tight")
            plots.close(fig)
            storage.write_bytes(storage.join(out_uri, name), open(png, "rb").read())
            tracking.log_artifact(png, "plots")
    # report.json last: its presence says the report is complete
    storage.write_json(storage.join(out_uri, REPORT), report)
    tracking.log_json(report, "evaluate/report.json")
    tracking.log_text(markdown, "evaluate/report.md")
    tracking.log_text("".join(jsonl.splitlines(keepends=True)[:50]), "evaluate/sample_predictions.jsonl")
