"""The demo's serving step: the stage path (`stage: serve` job) deploys, answers, cleans up."""

from __future__ import annotations

import pytest

from sentiray.serving.demo_step import DEMO_APP, serve_and_query

pytestmark = pytest.mark.slow


def test_serve_and_query_answers_and_cleans_up(serve_base, tiny_models, capsys):
    from ray import serve

    answers = serve_and_query(tiny_models["vlm"], n_requests=2)
    assert [a["status"] for a in answers] == [200, 200, 200]
    for a in answers[:2]:
        body = a["answer"]
        assert body["label"] in ("positive", "neutral", "negative") and a["gold"] in ("positive", "neutral", "negative")
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
        assert isinstance(body["chain"], str) and body["model"]["name"] == "vlm"
    assert answers[1]["request"]["aspect"]  # the last post is asked about an aspect
    chat = answers[2]["answer"]
    assert chat["object"] == "chat.completion" and chat["usage"]["completion_tokens"] <= 32
    printed = capsys.readouterr().out
    assert printed.count("gold") == 2 and "chat:" in printed
    # Serve was running before (the session's): the app is gone, Serve stays.
    assert DEMO_APP not in serve.status().applications
    assert serve_base  # still the session's proxy


SECOND_CLUSTER = """
import json, ray
from sentiray.serving.demo_step import serve_and_query, start_serve
started = start_serve()  # as the demo does while its student trains: Serve up before the model exists
again = start_serve()  # it runs now: nothing to start
statuses = [a["status"] for a in serve_and_query(MODEL, n_requests=1, chat=False, stop_serve=True)]
serve_actors = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE" in a["name"]]
print(json.dumps({"started": started, "again": again, "statuses": statuses, "serve_actors": serve_actors, "ray": ray.is_initialized()}))
"""


def test_a_second_local_cluster_serves_beside_a_running_one(serve_base, tiny_models):
    """A user's second terminal: `sentiray serve` runs (here: the session's Serve, HAProxy in
    front) and another command starts its own local Ray and serves too. Each cluster's HAProxy
    takes its own stats and metrics ports, so neither fails to start. That command is the
    demo's serving path: Serve started first (:func:`start_serve`), then the model deployed,
    asked, and Serve stopped with it (``stop_serve``) while Ray stays up."""
    import json
    import os
    import subprocess
    import sys

    # a user's shell: none of the variables this session's driver set for its own cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_", "RAY_ADDRESS"))}
    code = SECOND_CLUSTER.replace("MODEL", repr(tiny_models["vlm"]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["statuses"] == [200]
    assert seen["started"] is True and seen["again"] is False
    assert seen["serve_actors"] == [] and seen["ray"]  # Serve's controller and proxy gone, Ray not
