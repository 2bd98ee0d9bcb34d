"""`sentiray demo` end to end (small sizes) on a fresh directory: the three chains from their
pipeline files, a quiet console, and the MLflow record (a parent run per chain, a registered
model per method)."""

import base64

import mlflow
import pandas as pd
import pytest

from sentiray.data import schema, storage
from sentiray.demo import EXPERIMENT, run_demo

SMALL = {"size": 150, "epochs": 2, "teacher_steps": 60}


@pytest.mark.slow
def test_demo_runs_the_three_chains_quietly_and_records_them(tmp_path, monkeypatch, capfd, ray_cluster):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # the pipeline files are found in the source tree
    results = run_demo(workdir=str(tmp_path / "demo"), **SMALL)
    terminal = capfd.readouterr().out

    chains = results["chains"]
    assert set(chains) == {"mulcot", "lrsa", "mse"}
    mulcot = chains["mulcot"]["outputs"]
    assert sum(schema.read_manifest(mulcot["data"])["counts"].values()) == 150
    assert schema.read_manifest(mulcot["rationales"])["counts"]["train"] == 120
    assert schema.read_manifest(mulcot["augment"])["counts"]["train"] >= 120
    assert storage.exists(storage.join(mulcot["student"], "config.json"))
    assert 0 <= chains["mulcot"]["accuracy"] <= 1
    assert 0 <= chains["lrsa"]["jmasa_f1"] <= 1
    assert chains["mse"]["mae"] > 0 and chains["mse"]["baseline"] > 0
    assert [a["status"] for a in results["served"]] == [200] * len(results["served"])

    # quiet: sentiray's own lines on the terminal, everything else in the log
    lines = terminal.splitlines()
    assert 20 < len(lines) <= 150, terminal
    assert "Reporting training result" not in terminal and "FutureWarning" not in terminal
    assert results["log"] and storage.exists(results["log"])
    assert f"{results['log']}" in terminal
    assert all(
        f"rerun: sentiray pipeline {p}" in terminal
        for p in ("jobs/pipeline.yaml", "jobs/pipeline_lrsa.yaml", "jobs/pipeline_mse.yaml")
    )

    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name(EXPERIMENT)
    parents = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`sentiray.kind` = 'pipeline'")}
    assert set(parents) == {"demo-mulcot", "demo-lrsa", "demo-mse"}
    children = {
        name: {
            r.info.run_name: r
            for r in client.search_runs(
                [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
            )
        }
        for name, run in parents.items()
    }
    # a pipeline's child runs are named after its stages
    assert {"data-msc", "rationales-msc", "assistant", "augment", "student"} <= set(children["demo-mulcot"])
    assert all(r.info.status == "FINISHED" for runs in children.values() for r in runs.values())
    student = children["demo-mulcot"]["student"]
    assert student.data.params["distill.lambda_kd"] == "0.3"
    assert len(client.get_metric_history(student.info.run_id, "loss")) >= 2
    registered = {m.name for m in client.search_registered_models()}
    assert {"sentiray-student", "sentiray-lrsa", "sentiray-mse-adapter-msa"} <= registered

    # the registered student loads back and predicts
    rows = schema.read_rows(mulcot["data"], "test")[:4]
    df = pd.DataFrame(
        [{"text": r["text"], "image": base64.b64encode(r["image"]).decode(), "task": "msc"} for r in rows]
    )
    pred = mlflow.pyfunc.load_model("models:/sentiray-student/latest").predict(df)
    assert len(pred) == 4 and set(pred["label"]) <= {"positive", "neutral", "negative"}

    # a rerun reuses every finished stage and stand-in
    again = run_demo(workdir=str(tmp_path / "demo"), serve=False, **SMALL)
    assert again["chains"]["mulcot"]["outputs"] == mulcot
    assert "skipped" in capfd.readouterr().out
