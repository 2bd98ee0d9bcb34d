"""`sentiray demo` end to end (small sizes) on a fresh directory, and its MLflow record."""

import base64

import mlflow
import pandas as pd
import pytest

from sentiray.data import schema, storage
from sentiray.demo import run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_records_them(tmp_path, monkeypatch, ray_cluster):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    results = run_demo(workdir=str(tmp_path / "demo"), size=150, epochs=2, teacher_steps=60)
    assert sum(schema.read_manifest(results["data"]["msc"])["counts"].values()) == 150
    assert schema.read_manifest(results["rationales"])["counts"]["train"] == 120
    assert schema.read_manifest(results["augmented"])["counts"]["train"] >= 120
    assert storage.exists(storage.join(results["student"], "config.json"))
    assert 0 <= results["metrics"]["label_accuracy"] <= 1
    assert [a["status"] for a in results["served"]] == [200] * len(results["served"])

    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("sentiray-demo")
    parent = results["mlflow_parent_run"]
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    names = {r.info.run_name for r in children}
    assert {"models", "data-msc", "data-msa", "rationales", "assistant", "augment", "student", "evaluate-student"} <= names
    assert all(r.info.status == "FINISHED" for r in children)
    student = next(r for r in children if r.info.run_name == "student")
    assert student.data.params["distill.lambda_kd"] == "0.3"
    assert len(client.get_metric_history(student.info.run_id, "loss")) >= 2
    assert {"plots/loss.png", "plots/dev.png"} <= {a.path for a in client.list_artifacts(student.info.run_id, "plots")}
    evaluation = next(r for r in children if r.info.run_name == "evaluate-student")
    assert {a.path for a in client.list_artifacts(evaluation.info.run_id, "evaluate")} >= {"evaluate/report.json", "evaluate/report.md"}
    # the registered student loads back and predicts
    rows = schema.read_rows(results["data"]["msc"], "test")[:4]
    df = pd.DataFrame([{"text": r["text"], "image": base64.b64encode(r["image"]).decode(), "task": "msc"} for r in rows])
    pred = mlflow.pyfunc.load_model(results["student_registered"]).predict(df)
    assert len(pred) == 4 and set(pred["label"]) <= {"positive", "neutral", "negative"}
    # a rerun reuses the finished outputs
    again = run_demo(workdir=str(tmp_path / "demo"), size=150, epochs=2, teacher_steps=60)
    assert again["student"] == results["student"]
