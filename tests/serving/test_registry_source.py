"""Serving a model from the MLflow registry (models:/name@alias, /version, /latest) and swapping
it on running replicas through user_config, with no failed request."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests

from sentiray import tracking
from sentiray.models import registry
from sentiray.serving import app as serving_app
from sentiray.serving.app import IMPORT_PATH
from sentiray.serving.sources import resolve_source

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    """A SQLite MLflow store holding two versions of the tiny VLM; alias 'champion' -> version 1."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.setup()
    for _ in range(2):
        with mlflow.start_run():
            registry.log_model(tiny_models["vlm"], registered_name="tiny-student")
    mlflow.MlflowClient().set_registered_model_alias("tiny-student", "champion", "1")
    yield uri
    mp.undo()


def test_sources_resolve_to_pinned_versions(store, tiny_models):
    folder, info = resolve_source("models:/tiny-student@champion")
    assert info == {"name": "tiny-student", "version": "1"}
    assert Path(folder, "config.json").read_text() == Path(tiny_models["vlm"], "config.json").read_text()
    assert resolve_source("models:/tiny-student/latest")[1]["version"] == "2"
    assert resolve_source("models:/tiny-student/2")[1]["version"] == "2"
    assert resolve_source(tiny_models["vlm"])[1] == {"name": "vlm", "version": None}
    with pytest.raises(Exception, match="nobody"):
        resolve_source("models:/nobody/1")


def _application(model: str, store: str, swap_to: str | None = None) -> dict:
    user_config = {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    if swap_to:
        user_config["model"] = swap_to
    return {
        "name": "registry",
        "route_prefix": "/registry",
        "import_path": IMPORT_PATH,
        "args": {"model": model, "tracking_uri": store, "min_replicas": 1, "max_replicas": 1},
        "deployments": [{"name": "SentimentModel", "user_config": user_config}],
    }


def _deploy_with_cli(tmp_path, base_url: str, application: dict) -> None:
    """Through the `sentiray serve FILE --no-block` command itself."""
    import yaml

    host, port = base_url.removeprefix("http://").split(":")
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"http_options": {"host": host, "port": int(port)}, "applications": [application]}))
    parser = argparse.ArgumentParser()
    serving_app.add_commands(parser.add_subparsers())
    args = parser.parse_args(["serve", str(path), "--no-block"])
    assert args.func(args) == 0


def test_serve_from_registry_then_swap_without_downtime(store, serve_base, tmp_path):
    from ray import serve

    url = f"{serve_base}/registry/v1/sentiment"
    _deploy_with_cli(tmp_path, serve_base, _application("models:/tiny-student@champion", store))
    try:
        first = requests.post(url, json={"text": "a sunny day"}, timeout=60).json()
        assert first["model"] == {"id": "sentiray-student", "name": "tiny-student", "version": "1"}  # never the URI

        # Traffic keeps flowing while the config changes only the user_config's model.
        seen: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                r = requests.post(url, json={"text": "a sunny day"}, timeout=60)
                seen.append((r.status_code, r.json().get("model", {}).get("version")))

        threads = [threading.Thread(target=traffic) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        _deploy_with_cli(
            tmp_path, serve_base, _application("models:/tiny-student@champion", store, swap_to="models:/tiny-student/2")
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v == "2" for _, v in seen[-3:]):
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()

        assert {s for s, _ in seen} == {200}, [s for s, _ in seen if s != 200]
        versions = [v for _, v in seen]
        assert versions[0] == "1" and versions[-1] == "2", versions
        switched = versions.index("2")
        # Once the swap happened, it stayed (one replica, one atomic switch; the two
        # client threads may finish their last v1 request out of order).
        assert versions[switched:].count("1") <= 1, versions
        assert len(versions) > 10
        status = serve.status().applications["registry"].deployments["SentimentModel"]
        assert status.replica_states.get("RUNNING") == 1
    finally:
        serve.delete("registry")
