"""`sentiray serve` checks every model source where it runs, before Ray or Serve start: a source
holding no model fails in about a second with exit 2 and a message naming the field and why
(not after Serve restarted a failing replica for a minute)."""

from __future__ import annotations

import time

import mlflow
import pytest
import yaml

from sentiray import cli
from sentiray.data import storage
from sentiray.serving.app import IMPORT_PATH


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_models):
    """An MLflow store: one name registered without versions, one with a single version."""
    from sentiray import tracking
    from sentiray.models import registry

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.setup()
    mlflow.MlflowClient().create_registered_model("no-versions")
    with mlflow.start_run():
        registry.log_model(tiny_models["vlm"], registered_name="one-version")
    yield uri
    mp.undo()


def serve_fails(tmp_path, capsys, model: str) -> str:
    """`sentiray serve FILE --no-block` on a Serve YAML serving ``model``: exit 2, fast; its stderr."""
    import ray

    path = tmp_path / "serve.yaml"
    app = {"name": "student", "import_path": IMPORT_PATH, "args": {"model": model}}
    path.write_text(yaml.safe_dump({"applications": [app]}))
    ray_before = ray.is_initialized()
    capsys.readouterr()
    start = time.monotonic()
    assert cli.main(["serve", str(path), "--no-block"]) == 2
    assert time.monotonic() - start < 15  # the registry and S3 answer in well under a second; imports take the rest
    assert ray.is_initialized() == ray_before  # failed before Ray was started or joined
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "application 'student' args" in err, err
    return err


@pytest.mark.parametrize(
    "model, message",
    [
        # Before any training: `serve/student.yaml`'s default source.
        (
            "models:/sentiray-student/latest",
            "model: models:/sentiray-student/latest: no registered model 'sentiray-student' in the MLflow store",
        ),
        ("models:/no-versions/latest", "registered model 'no-versions' has no versions yet"),
        ("models:/no-versions@champion", "registered model 'no-versions' has no versions yet"),
        ("models:/one-version@champion", "registered model 'one-version' has no alias 'champion'"),
        ("models:/one-version/7", "registered model 'one-version' has no version '7' (versions: 1)"),
        ("runs:/0123456789abcdef/model", "model: cannot resolve runs:/0123456789abcdef/model"),
    ],
)
def test_registry_sources_without_a_model(store, tmp_path, capsys, model, message):
    err = serve_fails(tmp_path, capsys, model)
    assert message in err, err
    if model.startswith("models:/sentiray"):
        assert store in err  # which store was asked


def test_a_registered_version_passes_the_check(store):
    from sentiray.serving.sources import check_source

    assert check_source("models:/one-version/latest", "model")["family"] == "mulcot"  # from the pyfunc's config


def test_s3_prefixes_without_a_model(s3_uri, tmp_path, capsys):
    err = serve_fails(tmp_path, capsys, s3_uri)  # nothing there at all
    assert f"model: {s3_uri} holds no model (none of sentiray.json, config.json, adapter_config.json there)" in err
    storage.write_text(storage.join(s3_uri, "notes.txt"), "a prefix with files, none of them a model")
    assert f"model: {s3_uri} holds no model" in serve_fails(tmp_path, capsys, s3_uri)


def test_s3_prefix_with_a_model_passes_the_check(s3_uri, tiny_models):
    from sentiray.serving.sources import check_source

    storage.upload_dir(tiny_models["vlm"], s3_uri)
    assert check_source(s3_uri, "model") == {"family": "mulcot"}  # a plain HF folder: MulCoT's


def test_local_folders(tmp_path, capsys):
    assert "model: no folder '/nonexistent/student'" in serve_fails(tmp_path, capsys, "/nonexistent/student")
    (tmp_path / "empty").mkdir()
    assert f"model: {tmp_path / 'empty'} holds no model" in serve_fails(tmp_path, capsys, str(tmp_path / "empty"))
