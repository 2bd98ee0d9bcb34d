"""Serve configs are validated before anything starts: the shipped YAML, args, overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sentiray.config import ConfigError, ServeAppConfig
from sentiray.serving.app import IMPORT_PATH, app_config, build_app, serve_config_file

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "serve").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_are_valid(path):
    """Valid for Ray (what `serve run` checks), for our args schema, and naming our deployments."""
    from ray.serve.schema import ServeDeploySchema
    from sentiray.serving.app import INGRESS_DEPLOYMENT, MODEL_DEPLOYMENT

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (application,) = schema.applications
    assert application.import_path == IMPORT_PATH
    cfg = app_config(application.args)
    assert cfg.model.startswith("models:/") and cfg.labels == ["positive", "neutral", "negative"]
    deployments = {d["name"]: d for d in application.model_dump(exclude_unset=True)["deployments"]}
    assert set(deployments) == {MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT}
    model = deployments[MODEL_DEPLOYMENT]
    autoscaling = model["autoscaling_config"]
    assert autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    assert autoscaling["look_back_period_s"] > 10  # Serve wants it above its 10 s metrics interval
    batch = model["user_config"]["max_batch_size"]
    assert model["max_ongoing_requests"] >= batch  # a replica can fill a batch


def test_build_app_sets_the_deployment_options_from_args():
    app = build_app({"model": "models:/student/3", "max_batch_size": 4, "retry_after_s": 2, "max_ongoing_requests": 12,
                     "max_queued_requests": 5, "min_replicas": 2, "max_replicas": 3, "num_gpus": 0.5})
    from ray.serve._private.build_app import build_app as serve_build

    built = {d.name: d for d in serve_build(app, name="x").deployments}
    model = built["SentimentModel"]
    assert model.max_ongoing_requests == 12 and model.max_queued_requests == 5
    assert model.user_config == {"model": "models:/student/3", "max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    assert model.backpressure_config.retry_after_s == 2
    assert model._deployment_config.autoscaling_config.min_replicas == 2
    assert model._deployment_config.autoscaling_config.max_replicas == 3
    assert model.ray_actor_options["num_gpus"] == 0.5
    assert built["Ingress"].max_ongoing_requests >= 100


@pytest.mark.parametrize(
    "args, overrides, message",
    [
        ({"model": "m", "max_batch_sise": 4}, [], "max_batch_sise: unknown key"),
        ({"model": "m", "min_replicas": 3, "max_replicas": 1}, [], "min_replicas (3) > max_replicas (1)"),
        ({"model": "m", "max_batch_size": 32, "max_ongoing_requests": 8}, [], "never hold enough requests"),
        ({"model": "m", "limits": {"max_text_chars": 0}}, [], "limits.max_text_chars: Input should be greater than 0"),
        ({"model": "m", "limits": {"max_new_tokens": 100}}, [], "chain_max_new_tokens (256) > limits.max_new_tokens (100)"),
        ({}, [], "model: Field required"),
        ({"model": "/nonexistent/student"}, [], "model: no folder '/nonexistent/student'"),
        ({"model": "m"}, ["kind=audio"], "kind: Input should be 'vlm' or 'causal_lm'"),
    ],
)
def test_bad_args_fail_before_ray_starts(tmp_path, args, overrides, message):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "a", "import_path": IMPORT_PATH, "args": args}]}))
    with pytest.raises(ConfigError) as err:
        serve_config_file(str(path), overrides, blocking=False)
    assert message in str(err.value) and "application 'a' args" in str(err.value), str(err.value)


def test_job_yaml_of_another_stage_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("stage: data\ndata: {format: synthetic}\n")
    with pytest.raises(ConfigError, match="not a Serve config"):
        serve_config_file(str(path), blocking=False)


def test_serve_job_section_holds_the_app_args():
    from sentiray import config

    job = config.validate({"stage": "serve", "serve": {"model": "m", "port": 9000, "max_batch_size": 2}})
    assert job.serve.port == 9000 and isinstance(job.serve, ServeAppConfig)


def test_api_key_comes_from_the_environment_and_fails_closed(monkeypatch):
    from sentiray.serving.ingress import api_key_from_env

    assert api_key_from_env(ServeAppConfig(model="m")) is None
    cfg = ServeAppConfig(model="m", api_key_env="SENTIRAY_TEST_KEY_X")
    monkeypatch.delenv("SENTIRAY_TEST_KEY_X", raising=False)
    with pytest.raises(RuntimeError, match="SENTIRAY_TEST_KEY_X.*not set"):
        api_key_from_env(cfg)  # named but missing: the replica refuses to start open
    monkeypatch.setenv("SENTIRAY_TEST_KEY_X", "s3cret")
    assert api_key_from_env(cfg) == "s3cret"


def test_overrides_reach_args_and_the_user_config_that_wins_over_them(tmp_path):
    from sentiray.serving.app import load_serve_config

    schema = load_serve_config(str(REPO / "serve" / "student.yaml"), ["model=models:/other/7", "max_batch_size=4", "limits.max_text_chars=99"])
    (application,) = schema.applications
    assert application.args["model"] == "models:/other/7" and application.args["limits"]["max_text_chars"] == 99
    (model,) = [d for d in application.deployments if d.name == "SentimentModel"]
    assert model.user_config["max_batch_size"] == 4  # the YAML sets it there too
    assert "model" not in model.user_config  # not set in the YAML: args.model applies
    path = tmp_path / "swap.yaml"
    text = (REPO / "serve" / "student.yaml").read_text().replace("# model: models:/sentiray-student/4", "model: models:/sentiray-student/4")
    path.write_text(text)
    (application,) = load_serve_config(str(path), ["model=models:/other/8"]).applications
    (model,) = [d for d in application.deployments if d.name == "SentimentModel"]
    assert model.user_config["model"] == application.args["model"] == "models:/other/8"
