"""MLflow: where runs go, one parent run per pipeline, a child run per stage.

Default store: a SQLite database under ``./runs/mlflow`` (MLflow 3 keeps its file store in
maintenance mode, and the model registry needs a database), artifacts beside it. Set
``MLFLOW_TRACKING_URI`` (or ``tracking.tracking_uri``) to use a server instead.

A pipeline opens a parent run and exports its id as ``SENTIRAY_PARENT_RUN_ID``; every stage
run started afterwards (in this process, a subprocess or a Ray job that inherits the
variable) nests under it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentiray.config import JobConfig, TrackingConfig, flatten, to_yaml

PARENT_ENV = "SENTIRAY_PARENT_RUN_ID"
DEFAULT_STORE_DIR = "runs/mlflow"
_MAX_PARAM_LEN = 6000  # MLflow's limit on one param value


def default_tracking_uri() -> str:
    store = Path(os.environ.get("SENTIRAY_MLFLOW_DIR", DEFAULT_STORE_DIR)).absolute()
    return f"sqlite:///{store / 'mlflow.db'}"


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    if cfg is not None and cfg.tracking_uri:
        return cfg.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _artifact_root(uri: str) -> str | None:
    """Artifacts of the embedded SQLite store live beside the database, not in ./mlruns."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts").as_uri()
    return None


def setup(cfg: TrackingConfig | None = None) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id."""
    import mlflow

    # The SQLite store announces its schema migrations at INFO on every new database.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = cfg.experiment if cfg is not None else "sentiray"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=_artifact_root(uri))
        except Exception:  # noqa: BLE001 - another process created it first (the error type varies by store)
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    flat = {k: ("None" if v is None else str(v)[:_MAX_PARAM_LEN]) for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[i : i + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_text(text, artifact_file)


def log_artifact(path: str, artifact_path: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        if os.path.isdir(path):
            mlflow.log_artifacts(path, artifact_path)
        else:
            mlflow.log_artifact(path, artifact_path)


def log_figure(fig, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_figure(fig, artifact_file)


@contextlib.contextmanager
def pipeline_run(
    name: str, cfg: TrackingConfig | None = None, tags: dict[str, str] | None = None, run_id: str | None = None
) -> Iterator[Any]:
    """The parent run of a pipeline; stage runs opened inside nest under it.

    ``run_id``: reopen that run (a rerun of the same pipeline) if the store still has it."""
    import mlflow

    setup(cfg)
    old = os.environ.get(PARENT_ENV)
    if run_id is not None:
        try:
            mlflow.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            run_id = None  # deleted, or another store: start a new one
    start = {"run_id": run_id} if run_id else {"run_name": name, "tags": {"sentiray.kind": "pipeline", **(tags or {})}}
    with mlflow.start_run(**start) as run:
        os.environ[PARENT_ENV] = run.info.run_id
        try:
            yield run
        finally:
            if old is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = old


@contextlib.contextmanager
def stage_run(job: JobConfig, stage: str | None = None) -> Iterator[Any]:
    """A run for one stage: params flattened, the resolved config as an artifact.

    Nested under ``tracking.parent_run_id`` or the pipeline run named by
    ``SENTIRAY_PARENT_RUN_ID``. Yields None when tracking is disabled.
    """
    cfg = job.tracking
    if not cfg.enabled:
        yield None
        return
    import mlflow

    setup(cfg)
    stage = stage or job.stage
    # A stage run started inside another active run (same process: augment runs the
    # rationale stage) nests under it; otherwise under the configured or pipeline parent.
    active = mlflow.active_run()
    parent = active.info.run_id if active is not None else cfg.parent_run_id or os.environ.get(PARENT_ENV)
    tags = {"sentiray.kind": "stage", "sentiray.stage": stage, **cfg.tags}
    run_name = cfg.run_name or job.name or stage
    kwargs: dict[str, Any] = {"run_name": run_name, "tags": tags}
    if parent is not None:
        kwargs["parent_run_id"] = parent
        kwargs["nested"] = True
    with mlflow.start_run(**kwargs) as run:
        log_params(job.model_dump(mode="json", exclude_none=True))
        mlflow.log_text(to_yaml(job), "config/resolved.yaml")
        yield run


def save_figure_png(fig, path: str) -> str:
    """Write a figure as PNG beside the outputs and log it; returns the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    log_artifact(path, "plots")
    return path


def temp_dir() -> str:
    return tempfile.mkdtemp(prefix="sentiray-")
