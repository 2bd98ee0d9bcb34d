"""`sentiray demo` end to end on a fresh directory, and its MLflow record."""

import mlflow
import pytest

from sentiray.data import schema
from sentiray.demo import run_demo


@pytest.mark.slow
def test_demo_runs_and_records(tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    results = run_demo(workdir=str(tmp_path / "demo"), size=120)
    assert sum(schema.read_manifest(results["data"]["msc"])["counts"].values()) == 120
    assert schema.read_manifest(results["data"]["msa"])["task"] == "msa"
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("sentiray-demo")
    parent = results["mlflow_parent_run"]
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    stages = sorted(r.info.run_name for r in children)
    assert stages == ["data-msa", "data-msc", "models"]
    assert all(r.info.status == "FINISHED" for r in children)
    models = next(r for r in children if r.info.run_name == "models")
    assert 10_000 < models.data.metrics["params_vlm"] < 2_000_000
    # a rerun reuses the finished outputs
    again = run_demo(workdir=str(tmp_path / "demo"), size=120)
    assert again["data"] == results["data"]
