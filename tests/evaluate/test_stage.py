"""The evaluate stage on a tiny model: report files, metrics, plots, MLflow."""

import json

import mlflow
import pytest

from sentiray import config, stages
from sentiray.data import storage
from sentiray.data.prepare import run as prepare


@pytest.mark.slow
def test_evaluate_writes_report(tmp_path, tiny_models, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    base = {"storage": {"root": str(tmp_path)}, "tracking": {"experiment": "eval"}}
    prepare(
        config.validate(
            {**base, "stage": "data", "data": {"format": "synthetic", "task": "masc", "size": 60, "output": "d"}}
        )
    )
    cfg = config.validate(
        {
            **base,
            "stage": "evaluate",
            "data": {"format": "canonical", "input": "d"},
            "model": {"path": tiny_models["vlm"]},
            "evaluate": {"split": "test", "batch_size": 4, "output": "report"},
            "mulcot": {"chain_max_new_tokens": 24},
        }
    )
    summary = stages.run_stage(cfg)
    report = storage.read_json(str(tmp_path / "report" / "report.json"))
    n = report["n"]
    assert n == summary["report"]["n"] > 0
    assert sum(map(sum, report["label"]["confusion"])) == n
    assert 0 <= report["label"]["accuracy"] <= 1
    assert report["reference"] == "gold_chain"
    assert set(report["reasoning"]) >= {"bleu4", "rouge_l", "distinct_1", "distinct_2"}
    lines = (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == n and abs(sum(json.loads(lines[0])["probs"].values()) - 1) < 1e-5
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000
    assert "| label |" in (tmp_path / "report" / "report.md").read_text()
    client = mlflow.MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("eval").experiment_id])[0]
    assert run.data.metrics["label_accuracy"] == pytest.approx(report["label"]["accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/confusion.png"}
    # predictions.jsonl is in `sentiray score`'s format: rescoring it gives the report's numbers
    from sentiray.evaluate import score

    rescored = score.score(report["task"], score.read_predictions(str(tmp_path / "report" / "predictions.jsonl")))
    assert rescored["accuracy"] == pytest.approx(report["label"]["accuracy"])
    assert rescored["macro_f1"] == pytest.approx(report["label"]["macro_f1"])
