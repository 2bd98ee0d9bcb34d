"""MLflow tracking on a real (SQLite) store: parent/child runs, flattened params, artifacts."""

import mlflow
import pytest

from sentiray import config, tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    return uri


def job(**over):
    raw = {"stage": "data", "data": {"format": "synthetic", "size": 12}, "tracking": {"experiment": "t"}}
    return config.apply_overrides(raw, [f"{k}={v}" for k, v in over.items()])


def test_pipeline_with_child_stages(store):
    cfg = config.validate(job())
    with tracking.pipeline_run("pipe", cfg.tracking) as parent:
        for i in range(2):
            with tracking.stage_run(cfg, f"stage{i}") as run:
                tracking.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
                assert run.data.tags.get("mlflow.parentRunId") in (None, parent.info.run_id)
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("t")
    assert exp.artifact_location.endswith("/mlflow/artifacts")  # beside the DB, not ./mlruns
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["sentiray.stage"] for r in runs) == ["stage0", "stage1"]
    child = runs[0]
    assert child.data.params["data.size"] == "12"
    assert child.data.params["data.format"] == "synthetic"
    artifacts = [a.path for a in client.list_artifacts(child.info.run_id, "config")]
    assert artifacts == ["config/resolved.yaml"]
    text = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/config/resolved.yaml")
    assert config.validate(__import__("yaml").safe_load(text)).data.size == 12


def test_parent_from_environment(store, monkeypatch):
    cfg = config.validate(job())
    tracking.setup(cfg.tracking)
    with mlflow.start_run(run_name="outer") as outer:
        pass
    monkeypatch.setenv(tracking.PARENT_ENV, outer.info.run_id)
    with tracking.stage_run(cfg) as run:
        run_id = run.info.run_id
    assert mlflow.get_run(run_id).data.tags["mlflow.parentRunId"] == outer.info.run_id


def test_disabled_tracking_logs_nothing(store):
    cfg = config.validate(job(**{"tracking.enabled": "false"}))
    with tracking.stage_run(cfg) as run:
        assert run is None
    client = mlflow.MlflowClient(store)
    assert client.get_experiment_by_name("t") is None


def test_stage_inside_a_stage_nests_under_the_active_run(store, monkeypatch):
    """augment runs the rationale stage inside its own run, within a pipeline run."""
    cfg = config.validate(job())
    with tracking.pipeline_run("pipe", cfg.tracking) as parent:
        with tracking.stage_run(cfg, "outer") as outer:
            with tracking.stage_run(cfg, "inner") as inner:
                pass
    assert mlflow.get_run(outer.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert mlflow.get_run(inner.info.run_id).data.tags["mlflow.parentRunId"] == outer.info.run_id
