"""Load makes the model deployment scale from 1 to 2 replicas, and back when the load stops;
the load is driven by `sentiray loadtest` (its library function and its command)."""

from __future__ import annotations

import argparse
import json
import threading
import time

import pytest

from sentiray.clients import loadtest
from sentiray.serving.app import IMPORT_PATH
from tests.serving.conftest import deploy

pytestmark = pytest.mark.slow

# Serve pushes load metrics every 10 s by default; these tests want decisions in about a second.
# The handle that would report them is the session's HTTP proxy (started without these
# variables), so the replicas report their own requests instead.
FAST_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
    "RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE": "0",
}


@pytest.fixture(scope="module")
def scaled(serve_base, tiny_models, tmp_path_factory):
    from ray import serve

    application = {
        "name": "scale",
        "route_prefix": "/scale",
        "import_path": IMPORT_PATH,
        "args": {
            "model": tiny_models["vlm"],
            "max_batch_size": 4,
            "batch_wait_timeout_s": 0.01,
            "max_ongoing_requests": 8,
        },
        "deployments": [
            {
                "name": "SentimentModel",
                "autoscaling_config": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": 0.5,
                    "downscale_delay_s": 2,
                    "look_back_period_s": 1,
                    "metrics_interval_s": 0.25,
                },
                "ray_actor_options": {"num_cpus": 1, "runtime_env": {"env_vars": FAST_METRICS}},
            },
        ],
    }
    url = deploy(tmp_path_factory.mktemp("scale"), serve_base, application)
    yield url
    serve.delete("scale")


def running_replicas() -> int:
    from ray import serve

    return serve.status().applications["scale"].deployments["SentimentModel"].replica_states.get("RUNNING", 0)


def wait_for(replicas: int, timeout_s: float) -> float:
    start = time.monotonic()
    while running_replicas() != replicas:
        assert time.monotonic() - start < timeout_s, (
            f"not {replicas} replicas after {timeout_s} s (now {running_replicas()})"
        )
        time.sleep(0.2)
    return time.monotonic() - start


def test_scales_up_under_load_and_back_down(scaled):
    assert running_replicas() == 1
    url = f"{scaled}/v1/sentiment"
    payload = {"text": "a storm ruined the picnic", "chain": True, "max_tokens": 48}
    rounds: list[loadtest.LoadResult] = []
    up = threading.Event()

    def drive():  # 3 s rounds of 12 clients until the second replica runs (a new replica loads in ~5-10 s)
        deadline = time.monotonic() + 40
        while not up.is_set() and time.monotonic() < deadline:
            rounds.append(loadtest.run_load(url, payload, concurrency=12, duration_s=3))

    load = threading.Thread(target=drive)
    load.start()
    try:
        up_after = wait_for(2, timeout_s=40)
    finally:
        up.set()
        load.join()
    down_after = wait_for(1, timeout_s=40)
    print(f"\n2 replicas after {up_after:.1f} s of load, back to 1 {down_after:.1f} s after it")
    for result in rounds:
        print(result.summary())
        assert set(result.statuses) == {200}, result.statuses  # scaling never fails a request
        assert result.percentile(50) <= result.percentile(95) <= result.percentile(99)
    assert sum(r.ok for r in rounds) > 20


def test_loadtest_command_prints_rate_and_percentiles(scaled, tmp_path, capsys):
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"text": "what a lovely day"}))
    parser = argparse.ArgumentParser()
    loadtest.add_commands(parser.add_subparsers())
    args = parser.parse_args(
        [
            "loadtest",
            f"{scaled}/v1/sentiment",
            "--concurrency",
            "2",
            "--duration",
            "2",
            "--payload",
            str(payload),
            "--json",
        ]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] == out["requests"] > 5 and out["errors"] == {}
    assert out["rps"] == pytest.approx(out["ok"] / out["duration_s"], rel=0.01)
    assert 0 < out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    args = parser.parse_args(["loadtest", f"{scaled}/v1/sentiment", "--duration", "1", "--concurrency", "1"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "requests/s" in text and "p95" in text and "p99" in text
