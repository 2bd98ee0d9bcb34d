"""Several models on one replica (Ray Serve model multiplexing): each request is answered by the
model it names, in the serve_multiplexed_model_id header, the body's model field or the OpenAI
model field; an unknown id is a 404 naming the known ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sentiray.serving.app import IMPORT_PATH
from tests.serving.conftest import b64, deploy

pytestmark = pytest.mark.slow

HEADER = "serve_multiplexed_model_id"


@pytest.fixture(scope="module")
def multi(serve_base, tiny_models, tiny_vlm_b, tmp_path_factory):
    from ray import serve

    application = {
        "name": "multi",
        "route_prefix": "/multi",
        "import_path": IMPORT_PATH,
        "args": {
            "models": {"a": tiny_models["vlm"], "b": tiny_vlm_b},
            "max_models_per_replica": 2,
            "min_replicas": 1,
            "max_replicas": 1,
            "max_batch_size": 4,
        },
    }
    url = deploy(tmp_path_factory.mktemp("multi"), serve_base, application)
    yield url
    serve.delete("multi")


@pytest.fixture(scope="module")
def local(tiny_models, tiny_vlm_b):
    """Both models in this process: the reference answers."""
    from sentiray import families

    return {"a": families.load_predictor(tiny_models["vlm"]), "b": families.load_predictor(tiny_vlm_b)}


def sentiment(url, body, model=None, **headers):
    if model:
        headers[HEADER] = model
    return requests.post(f"{url}/v1/sentiment", json=body, headers=headers, timeout=60)


def test_each_request_is_answered_by_the_model_it_names(multi, local, posts):
    post = posts[0]
    body = {"text": post["text"], "image": b64(post["image"])}
    expected = {m: p.predict([{"text": post["text"], "image": post["image"]}])[0]["probs"] for m, p in local.items()}
    assert max(abs(expected["a"][k] - expected["b"][k]) for k in expected["a"]) > 1e-3  # two different models

    # Mixed traffic, by header and by body field, all at once on the one replica.
    calls = [("a", "header"), ("b", "header"), ("a", "body"), ("b", "body")] * 3
    with ThreadPoolExecutor(6) as pool:
        replies = list(
            pool.map(
                lambda c: (
                    sentiment(multi, body, c[0]) if c[1] == "header" else sentiment(multi, {**body, "model": c[0]})
                ),
                calls,
            )
        )
    for (model, _), reply in zip(calls, replies):
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["model"]["id"] == model and answer["model"]["version"] is None
        assert max(abs(answer["probabilities"][k] - v) for k, v in expected[model].items()) < 1e-4

    from ray import serve

    status = serve.status().applications["multi"].deployments["SentimentModel"]
    assert status.replica_states.get("RUNNING") == 1  # both models on one replica


def test_unknown_missing_or_conflicting_ids(multi, posts):
    body = {"text": posts[1]["text"]}
    r = sentiment(multi, body, "c")
    assert r.status_code == 404 and "model 'c' is not served here; known: ['a', 'b']" in r.json()["error"]["message"]
    r = sentiment(multi, {**body, "model": "c"})
    assert r.status_code == 404 and "known: ['a', 'b']" in r.json()["error"]["message"]
    r = sentiment(multi, body)
    assert r.status_code == 400 and "model: name one of ['a', 'b']" in r.json()["error"]["message"]
    r = sentiment(multi, {**body, "model": "b"}, "a")
    assert (
        r.status_code == 400
        and "the body names 'b', the serve_multiplexed_model_id header 'a'" in r.json()["error"]["message"]
    )


def test_openai_routes_list_and_use_every_model(multi, local):
    import openai

    client = openai.OpenAI(base_url=f"{multi}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["a", "b"]
    messages = [{"role": "user", "content": "What a lovely day at the beach!"}]
    for model in ("b", "a"):
        done = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
        expected = local[model].generate([messages[0]["content"]], [None], max_new_tokens=8)[0]
        assert done.model == model and done.choices[0].message.content == expected.text
        assert (
            done.usage.completion_tokens == expected.new_tokens and done.usage.prompt_tokens == expected.prompt_tokens
        )
    with pytest.raises(openai.NotFoundError, match="known: \\['a', 'b'\\]"):
        client.chat.completions.create(model="gpt-4o", messages=messages)
