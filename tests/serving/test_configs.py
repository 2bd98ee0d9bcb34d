"""Serve configs are validated before anything starts: the shipped YAML, args, overrides, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sentiray.config import ConfigError, ServeAppConfig
from sentiray.serving.app import IMPORT_PATH, app_config, build_app, serve_config_file

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "serve").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_serve_configs_are_valid(path):
    """Valid for Ray (what `serve run` checks), for our args schema, and naming our deployment."""
    from ray.serve.schema import ServeDeploySchema

    from sentiray.serving.app import MODEL_DEPLOYMENT

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (application,) = schema.applications
    assert application.import_path == IMPORT_PATH
    cfg = app_config(application.args)
    sources = cfg.models or {"model": cfg.model}  # one model, or several multiplexed (serve/adapters.yaml)
    assert all(s.startswith("models:/") for s in sources.values()), sources
    assert cfg.family is None  # the family comes from the models' manifests
    if cfg.models:  # every multiplexed model fits on one replica (adapters: one backbone for all)
        assert cfg.max_models_per_replica >= len(cfg.models) >= 2
    deployments = {d["name"]: d for d in application.model_dump(exclude_unset=True)["deployments"]}
    assert set(deployments) == {MODEL_DEPLOYMENT}
    model = deployments[MODEL_DEPLOYMENT]
    autoscaling = model["autoscaling_config"]
    assert autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    assert autoscaling["look_back_period_s"] > 10  # Serve wants it above its 10 s metrics interval
    assert cfg.max_ongoing_requests >= model["user_config"]["max_batch_size"]  # a replica can fill a batch
    assert "max_ongoing_requests" not in model and "max_queued_requests" not in model  # args: the replica admits


def test_build_app_sets_the_deployment_options_from_args():
    app = build_app(
        {
            "model": "models:/student/3",
            "family": "mulcot",
            "max_batch_size": 4,
            "retry_after_s": 2,
            "max_ongoing_requests": 12,
            "max_queued_requests": 5,
            "min_replicas": 2,
            "max_replicas": 3,
            "num_gpus": 0.5,
            "access_log": False,
        }
    )
    from ray.serve._private.build_app import build_app as serve_build

    (model,) = serve_build(app, name="x").deployments
    assert model.name == "SentimentModel"
    # The replica admits 12 + 5 requests itself (503 in the API's shape); Serve leaves room above.
    assert model.max_ongoing_requests == 2 * 17 + 16 and model.max_queued_requests == -1
    assert model.user_config == {"model": "models:/student/3", "max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    assert model.backpressure_config.retry_after_s == 2
    assert model._deployment_config.autoscaling_config.min_replicas == 2
    assert model._deployment_config.autoscaling_config.max_replicas == 3
    assert model.ray_actor_options["num_gpus"] == 0.5
    assert model._deployment_config.logging_config["enable_access_log"] is False


BAD_ARGS = [
    ({"model": "m", "max_batch_sise": 4}, [], "max_batch_sise: unknown key"),
    ({"model": "m", "min_replicas": 3, "max_replicas": 1}, [], "min_replicas (3) > max_replicas (1)"),
    ({"model": "m", "max_batch_size": 32, "max_ongoing_requests": 8}, [], "never hold enough requests"),
    ({"model": "m", "limits": {"max_text_chars": 0}}, [], "limits.max_text_chars: Input should be greater than 0"),
    ({"model": "m", "limits": {"max_new_tokens": 100}}, [], "chat_max_new_tokens (256) > limits.max_new_tokens (100)"),
    (
        {"model": "m", "limits": {"min_image_side": 64, "max_image_side": 32}},
        [],
        "min_image_side (64) > max_image_side (32)",
    ),
    ({}, [], "model: Field required"),
    ({"model": "m", "models": {"a": "m"}}, [], "give one model, or several models by id, not both"),
    ({"models": {"a b": "m"}}, [], "models: id 'a b' must start with a letter or digit"),
    ({"model": "/nonexistent/student"}, [], "model: no folder '/nonexistent/student'"),
    ({"models": {"a": "VLM", "b": "/nonexistent/b"}}, [], "models.b: no folder '/nonexistent/b'"),
    ({"model": "m"}, ["kind=audio"], "kind: Input should be 'vlm' or 'causal_lm'"),
    # The MulCoT-only args of before families: the message says where each went.
    ({"model": "m", "task": "msc"}, [], "task: moved, now read from the model's manifest (sentiray.json)"),
    ({"model": "m", "chain_max_new_tokens": 64}, [], "chain_max_new_tokens: moved, now endpoint.chain_max_new_tokens"),
    # The family's endpoint settings, checked by its schema once the family is known.
    ({"model": "VLM", "endpoint": {"chain_tokens": 8}}, [], "endpoint.chain_tokens: unknown key"),
    (
        {"model": "VLM", "endpoint": {"chain_max_new_tokens": 600}},
        [],
        "endpoint.chain_max_new_tokens: chain_max_new_tokens (600) > limits.max_new_tokens (512)",
    ),
    ({"model": "VLM", "family": "lrsa2"}, [], "family: unknown family 'lrsa2'; known: ["),
]


@pytest.mark.parametrize("args, overrides, message", BAD_ARGS, ids=[m[:40] for _, _, m in BAD_ARGS])
def test_bad_args_fail_before_ray_starts(tmp_path, tiny_models, args, overrides, message):
    args = yaml.safe_load(yaml.safe_dump(args).replace("VLM", tiny_models["vlm"]))
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "a", "import_path": IMPORT_PATH, "args": args}]}))
    with pytest.raises(ConfigError) as err:
        serve_config_file(str(path), overrides, blocking=False)
    assert message in str(err.value) and "application 'a' args" in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "deployment, message",
    [
        (
            {"name": "Ingress", "num_replicas": 1},
            "no deployment 'Ingress'; it has one, 'SentimentModel' (the ingress is gone",
        ),
        ({"name": "SentimentModel", "max_queued_requests": 5}, "set max_queued_requests in args"),
    ],
)
def test_deployment_entries_of_the_old_layout_are_refused(tmp_path, tiny_models, deployment, message):
    app = {"name": "a", "import_path": IMPORT_PATH, "args": {"model": tiny_models["vlm"]}, "deployments": [deployment]}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [app]}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        serve_config_file(str(path), blocking=False)


def test_the_family_comes_from_the_models_manifest(tmp_path, tiny_models):
    from sentiray.serving.app import checked_config

    assert checked_config({"model": tiny_models["vlm"]}).family == "mulcot"  # a plain HF folder: MulCoT
    exported = tmp_path / "exported"
    shutil.copytree(tiny_models["vlm"], exported)
    (exported / "sentiray.json").write_text(json.dumps({"family": "no-such-family", "task": "msa"}))
    with pytest.raises(ConfigError, match="unknown family 'no-such-family'"):
        checked_config({"model": str(exported)})
    with pytest.raises(ConfigError, match="models: one application serves one family's endpoints"):
        checked_config({"models": {"a": str(exported), "b": tiny_models["vlm"]}})
    (exported / "sentiray.json").write_text(json.dumps({"family": "mulcot", "task": "masc"}))
    assert checked_config({"models": {"a": str(exported), "b": tiny_models["vlm"]}}).family == "mulcot"
    with pytest.raises(ConfigError, match="model: .*empty.* holds no model"):
        (tmp_path / "empty").mkdir()
        checked_config({"model": str(tmp_path / "empty")})


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


def test_overrides_reach_args_and_the_user_config_that_wins_over_them(tmp_path, tiny_models, tiny_vlm_b):
    from sentiray.serving.app import load_serve_config

    vlm = tiny_models["vlm"]
    schema = load_serve_config(
        str(REPO / "serve" / "student.yaml"), [f"model={vlm}", "max_batch_size=4", "limits.max_text_chars=99"]
    )
    (application,) = schema.applications
    assert application.args["model"] == vlm and application.args["limits"]["max_text_chars"] == 99
    assert application.args["family"] == "mulcot"  # read from the model on the driver
    (model,) = [d for d in application.deployments if d.name == "SentimentModel"]
    assert model.user_config["max_batch_size"] == 4  # the YAML sets it there too
    assert "model" not in model.user_config  # not set in the YAML: args.model applies
    path = tmp_path / "swap.yaml"
    text = (REPO / "serve" / "student.yaml").read_text().replace("# model: models:/sentiray-student/4", f"model: {vlm}")
    path.write_text(text)
    (application,) = load_serve_config(str(path), [f"model={tiny_vlm_b}"]).applications
    (model,) = [d for d in application.deployments if d.name == "SentimentModel"]
    assert model.user_config["model"] == application.args["model"] == tiny_vlm_b
    # A user_config model that holds none fails like args.model would.
    text = text.replace(f"model: {vlm}", "model: /nonexistent/swap").replace(
        "model: models:/sentiray-student/latest", f"model: {vlm}"
    )
    path.write_text(text)
    with pytest.raises(ConfigError, match="user_config:\n  model: no folder '/nonexistent/swap'"):
        load_serve_config(str(path))


def test_a_local_cluster_gets_the_haproxy_ingress_unless_the_user_set_otherwise(monkeypatch):
    from sentiray import runtime

    for key in runtime.SERVE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the user's choice wins
    runtime.set_serve_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY")
    runtime.set_serve_env()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
