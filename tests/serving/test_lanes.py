"""Generation and label scoring share a replica fairly: `/v1/sentiment` is answered, quickly, while
a 512-token chat stream runs on the same replica (generation has its own, capped lane)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from sentiray.serving.app import IMPORT_PATH
from tests.serving.conftest import b64, deploy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lanes(serve_base, tiny_models, tmp_path_factory):
    from ray import serve

    application = {
        "name": "lanes",
        "route_prefix": "/lanes",
        "import_path": IMPORT_PATH,
        "args": {
            "model": tiny_models["vlm"],
            "min_replicas": 1,
            "max_replicas": 1,
            "max_batch_size": 4,
            "max_concurrent_generations": 1,
            "limits": {"max_new_tokens": 512},
        },
    }
    url = deploy(tmp_path_factory.mktemp("lanes"), serve_base, application)
    yield url
    serve.delete("lanes")


def test_sentiment_is_answered_while_a_long_stream_runs(lanes, posts):
    body = {
        "model": "sentiray-student",
        "max_tokens": 512,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Tell me a long story about the sea"}],
    }
    stream: dict = {}

    def run_stream():
        start = time.monotonic()
        with requests.post(f"{lanes}/v1/chat/completions", json=body, stream=True, timeout=120) as r:
            lines = [line for line in r.iter_lines(decode_unicode=True) if line]
        stream.update(status=r.status_code, lines=lines, start=start, end=time.monotonic())

    thread = threading.Thread(target=run_stream)
    thread.start()
    time.sleep(0.5)  # the generation has started
    answered = []  # (latency s, finished at)
    while thread.is_alive() and len(answered) < 200:
        sent = time.monotonic()
        r = requests.post(
            f"{lanes}/v1/sentiment", json={"text": posts[0]["text"], "image": b64(posts[0]["image"])}, timeout=60
        )
        assert r.status_code == 200, r.text
        answered.append((time.monotonic() - sent, time.monotonic()))
    thread.join()

    assert stream["status"] == 200 and stream["lines"][-1] == "data: [DONE]"
    assert '"completion_tokens":512' in stream["lines"][-2]  # the whole 512-token generation ran
    duration = stream["end"] - stream["start"]
    during = [latency for latency, done in answered if done < stream["end"]]
    print(
        f"\nstream of 512 tokens: {duration:.2f} s; {len(during)} /v1/sentiment answered meanwhile, "
        f"slowest {max(during):.3f} s, median {sorted(during)[len(during) // 2]:.3f} s"
    )
    # Before the lanes, the first of them waited for the whole stream.
    assert len(during) >= 3
    assert max(during) < min(1.0, duration / 3)
