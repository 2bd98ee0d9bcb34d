"""Stage ``evaluate``: classification and reasoning metrics of a trained model on a split.

Two predictions per sample:
- ``label``: the l-stream answer with the highest likelihood (exact, cheap; also gives
  class probabilities);
- ``chain``: a greedily generated reasoning chain, its label parsed by the method.md rule
  (unparseable counts as wrong and is counted).
Reasoning metrics compare generated chains with the reference chains (the teacher's
rationales, or the synthetic gold chains).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from tqdm import tqdm

from sentiray import tracking
from sentiray.config import EvaluateConfig, JobConfig
from sentiray.data import images, schema, storage
from sentiray.evaluate import metrics, plots
from sentiray import prompts
from sentiray.prompts import parsing

REPORT = "report.json"


def _reference_column(rows: list[dict[str, Any]], cfg: EvaluateConfig) -> str | None:
    if cfg.reference_column:
        return cfg.reference_column
    for column in ("rationale", "gold_chain"):
        if rows and rows[0].get(column):
            return column
    return None


def predict(generator, rows: list[dict[str, Any]], labels: tuple[str, ...], cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """Label-scored (and optionally chain) predictions for ``rows``, with progress."""
    import torch

    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), desc="evaluate", unit="row", disable=None)
    for start in range(0, len(rows), cfg.batch_size):
        chunk = rows[start : start + cfg.batch_size]
        imgs = [images.load(r) for r in chunk]
        scores = generator.label_logprobs([prompts.render("label", r) for r in chunk], imgs, labels)
        probs = torch.softmax(scores, -1)
        chains = [None] * len(chunk)
        if cfg.generate_chains:
            chains = generator.generate([prompts.render("chain", r) for r in chunk], imgs, max_new_tokens=cfg.max_new_tokens)
        for row, p, chain in zip(chunk, probs, chains):
            out.append({
                "id": row["id"],
                "gold": row["label"],
                "label": labels[int(p.argmax())],
                "probs": {label: float(v) for label, v in zip(labels, p)},
                "chain": chain.text if chain else None,
                "chain_label": parsing.parse_label(chain.text, labels) if chain else None,
            })
        bar.update(len(chunk))
    bar.close()
    return out


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation of {report['model']}", "", f"data: `{report['data']}` split `{report['split']}`, "
             f"{report['n']} samples, {report['seconds']:.1f} s", "", "| prediction | accuracy | macro-F1 | weighted-F1 | unparseable |",
             "| --- | --- | --- | --- | --- |"]
    for name in ("label", "chain"):
        m = report.get(name)
        if m:
            lines.append(f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['weighted_f1']:.4f} | {m['unparseable']} |")
    r = report.get("reasoning")
    if r:
        lines += ["", f"Reasoning (vs `{report['reference']}`):", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in r.items()]
    lines += ["", "Confusion matrix (label prediction; rows gold, columns predicted):", "",
              "| gold \\ predicted | " + " | ".join(report["labels"]) + " |",
              "| --- |" + " --- |" * len(report["labels"])]
    for label, row in zip(report["labels"], report["label"]["confusion"]):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def run(cfg: JobConfig) -> dict[str, Any]:
    from sentiray.models.generation import Generator
    from sentiray.models.loading import load_model, prepare_for_generation
    from sentiray.models.registry import resolve_model_uri

    ecfg = cfg.evaluate or EvaluateConfig()
    data_uri = cfg.resolve(cfg.data.input or cfg.data.output)
    rows = schema.read_rows(data_uri, ecfg.split)
    if ecfg.limit:
        rows = rows[: ecfg.limit]
    if not rows:
        raise schema.DataError(f"split {ecfg.split!r} of {data_uri} is empty")
    task = rows[0]["task"]
    labels = schema.labels_for(task)
    if not labels:
        raise schema.DataError(f"evaluate classifies; {data_uri} holds the regression task {task!r}")
    model_uri = cfg.model.path if cfg.model.path.startswith(("models:/", "runs:/")) else cfg.resolve(cfg.model.path)
    out_uri = cfg.resolve(ecfg.output)

    with tracking.stage_run(cfg, "evaluate"):
        start = time.perf_counter()
        model, processor = load_model(resolve_model_uri(model_uri), kind=cfg.model.kind, dtype=cfg.model.dtype, for_generation=True)
        prepare_for_generation(model, processor)
        generator = Generator(model, processor, max_new_tokens=ecfg.max_new_tokens)
        predictions = predict(generator, rows, labels, ecfg)
        golds = [p["gold"] for p in predictions]
        report: dict[str, Any] = {
            "model": model_uri, "data": data_uri, "split": ecfg.split, "task": task, "n": len(rows),
            "labels": list(labels), "label": metrics.classification(golds, [p["label"] for p in predictions], labels),
        }
        reference = _reference_column(rows, ecfg)
        if ecfg.generate_chains:
            report["chain"] = metrics.classification(golds, [p["chain_label"] for p in predictions], labels)
            if reference:
                refs = [r.get(reference) or "" for r in rows]
                report["reasoning"] = metrics.reasoning([p["chain"] or "" for p in predictions], refs)
                report["reference"] = reference
        report["seconds"] = time.perf_counter() - start
        _write_outputs(report, predictions, out_uri)
        flat = {f"{kind}_{k}": report[kind][k] for kind in ("label", "chain") if kind in report
                for k in ("accuracy", "macro_f1", "weighted_f1", "unparseable")}
        flat.update({f"reasoning_{k}": v for k, v in report.get("reasoning", {}).items() if v is not None})
        tracking.log_metrics(flat)
    print(report_markdown(report))
    print(f"evaluate: report in {out_uri}")
    return {"output": out_uri, "metrics": flat, "report": report}


def _write_outputs(report: dict[str, Any], predictions: list[dict[str, Any]], out_uri: str) -> None:
    storage.write_text(storage.join(out_uri, "report.md"), report_markdown(report))
    storage.write_text(storage.join(out_uri, "predictions.jsonl"), "".join(json.dumps(p) + "\n" for p in predictions))
    with tempfile.TemporaryDirectory() as tmp:
        fig = plots.confusion(report["label"]["confusion"], report["labels"], f"{report['split']}: label prediction")
        png = os.path.join(tmp, "confusion.png")
        fig.savefig(png, dpi=120, bbox_inches="tight")
        plots.close(fig)
        storage.write_bytes(storage.join(out_uri, "confusion.png"), open(png, "rb").read())
        tracking.log_artifact(png, "plots")
    # report.json last: its presence says the report is complete (`sentiray pipeline` skips on it)
    storage.write_json(storage.join(out_uri, REPORT), report)
    tracking.log_json(report, "evaluate/report.json")
    tracking.log_text(report_markdown(report), "evaluate/report.md")
    tracking.log_text("".join(json.dumps(p) + "\n" for p in predictions[:50]), "evaluate/sample_predictions.jsonl")
