"""The HTTP API over real HTTP on a local Ray cluster: every route, batching, streaming,
the OpenAI client, auth, overload, each kind of bad input, and a bad input inside a batch.

The answers are checked against the same tiny model run in-process: probabilities and
greedy generations must be equal, so the endpoint adds transport, not arithmetic.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from sentiray import prompts
from sentiray.data import images
from sentiray.serving.app import IMPORT_PATH
from tests.serving.conftest import b64, deploy, png

pytestmark = pytest.mark.slow

KEY = "sk-test-0123456789"
KEY_ENV = "SENTIRAY_TEST_API_KEY"
LABELS = ["positive", "neutral", "negative"]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def api(serve_base, tiny_models, tmp_path_factory):
    from ray import serve

    application = {
        "name": "api",
        "route_prefix": "/api",
        "import_path": IMPORT_PATH,
        "args": {
            "model": tiny_models["vlm"],
            "api_key_env": KEY_ENV,
            "max_batch_size": 4,  # not the decorator's default: shows the config reaches @serve.batch
            "batch_wait_timeout_s": 0.1,
            "endpoint": {"chain_max_new_tokens": 16},
            "chat_max_new_tokens": 16,
            "min_replicas": 1,
            "max_replicas": 1,
            "max_ongoing_requests": 8,
            "max_queued_requests": 16,
            "limits": {
                "max_body_bytes": 400_000,
                "max_text_chars": 500,
                "max_aspect_chars": 40,
                "max_image_bytes": 100_000,
                "max_image_side": 256,
                "image_formats": ["PNG", "JPEG"],
                "min_image_side": 4,
                "max_image_pixels": 40_000,
                "max_image_aspect_ratio": 20,
                "max_feature_frames": 50,
                "max_feature_dim": 16,
                "max_new_tokens": 64,
                "max_messages": 8,
            },
        },
        # The key reaches the replica through its environment, as on a cluster.
        "deployments": [
            {
                "name": "SentimentModel",
                "ray_actor_options": {"num_cpus": 1, "runtime_env": {"env_vars": {KEY_ENV: KEY}}},
            }
        ],
    }
    url = deploy(tmp_path_factory.mktemp("api"), serve_base, application)
    yield url
    serve.delete("api")


@pytest.fixture(scope="module")
def local(tiny_models):
    """The same model in this process: the reference for every number the endpoint returns."""
    from sentiray.models.generation import Generator
    from sentiray.models.loading import load_model

    model, processor = load_model(tiny_models["vlm"], kind="vlm", for_generation=True)
    return Generator(model, processor)


def post(url, body, **kw):
    return requests.post(url, json=body, headers={**AUTH, **kw.pop("headers", {})}, timeout=60, **kw)


# --------------------------------------------------------------------------- probes, auth, schema


def test_requests_reach_the_replica_through_haproxy(api, serve_base):
    """The front door of a cluster sentiray starts is HAProxy (runtime.SERVE_ENV), forwarding to
    the replica's own HTTP server: no Python proxy on a request's path."""
    import psutil

    port = int(serve_base.rsplit(":", 1)[1])
    listening = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
    }
    assert {psutil.Process(pid).name() for pid in listening} == {"haproxy"}
    assert requests.get(f"{api}/healthz", timeout=10).status_code == 200
    r = post(f"{api}/v1/sentiment", {"text": "a lovely day"})
    assert r.status_code == 200 and r.json()["label"] in LABELS


def test_probes_models_schema_and_api_key(api):
    assert requests.get(f"{api}/healthz", timeout=10).json() == {"status": "ok"}  # no key needed
    assert requests.get(f"{api}/readyz", timeout=10).json() == {"status": "ready"}

    for path in ("/v1/models", "/openapi.json"):
        r = requests.get(api + path, timeout=10)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        r = requests.get(api + path, headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert r.status_code == 401
    r = requests.post(f"{api}/v1/sentiment", json={"text": "hi"}, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert (
        requests.post(f"{api}/v1/sentiment", json={"text": "hi"}, headers={"X-API-Key": KEY}, timeout=30).status_code
        == 200
    )

    models = requests.get(f"{api}/v1/models", headers=AUTH, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["sentiray-student"]
    assert models["data"][0]["source"] == {"id": "sentiray-student", "name": "vlm", "version": None}

    schema = requests.get(f"{api}/openapi.json", headers=AUTH, timeout=10).json()
    assert {"/v1/sentiment", "/v1/chat/completions", "/v1/models", "/healthz", "/readyz"} <= set(schema["paths"])
    fields = schema["components"]["schemas"]["SentimentRequest"]["properties"]
    assert {"text", "image", "aspect", "audio", "vision", "chain", "max_tokens", "model"} == set(fields)
    assert set(schema["components"]["schemas"]["SentimentResponse"]["properties"]) == {
        "label",
        "probabilities",
        "chain",
        "chain_label",
        "model",
        "timings",
        "warnings",
    }


# --------------------------------------------------------------------------- /v1/sentiment


def test_sentiment_matches_the_model_in_process(api, posts, local, tiny_models):
    post_ = posts[0]
    r = post(f"{api}/v1/sentiment", {"text": post_["text"], "image": b64(post_["image"])})
    assert r.status_code == 200, r.text
    body = r.json()
    probs = body["probabilities"]
    assert list(probs) == LABELS and abs(sum(probs.values()) - 1) < 1e-5
    assert body["label"] == max(probs, key=probs.get)
    assert body["chain"] is None and body["chain_label"] is None and body["warnings"] == []
    # Name and version, never where the model is stored.
    assert body["model"] == {"id": "sentiray-student", "name": "vlm", "version": None}
    assert tiny_models["vlm"] not in r.text
    row = {"text": post_["text"], "task": "msc"}
    expected = torch.softmax(
        local.label_logprobs([prompts.render("label", row)], [images.decode(post_["image"])], LABELS), -1
    )[0]
    assert [round(p, 4) for p in probs.values()] == [round(p, 4) for p in expected.tolist()]
    t = body["timings"]
    assert t["batch_size"] >= 1 and 0 < t["model_ms"] < t["total_ms"] and 0 <= t["queue_ms"] < t["total_ms"]

    # An aspect switches to the aspect-level prompt; the probabilities follow it.
    r = post(f"{api}/v1/sentiment", {"text": post_["text"], "aspect": "the beach"})
    row = {"text": post_["text"], "aspect": "the beach", "task": "masc"}
    expected = torch.softmax(local.label_logprobs([prompts.render("label", row)], [None], LABELS), -1)[0]
    assert [round(p, 4) for p in r.json()["probabilities"].values()] == [round(p, 4) for p in expected.tolist()]


def test_sentiment_with_chain_and_features(api, posts, local):
    post_ = posts[1]
    body = {
        "text": post_["text"],
        "image": "data:image/png;base64," + b64(post_["image"]),
        "chain": True,
        "max_tokens": 12,
        "audio": [[0.1] * 8] * 10,
        "vision": [[1, 2, 3]] * 4,
    }
    r = post(f"{api}/v1/sentiment", body)
    assert r.status_code == 200, r.text
    out = r.json()
    row = {"text": post_["text"], "task": "msc"}
    expected = local.generate([prompts.render("chain", row)], [images.decode(post_["image"])], max_new_tokens=12)[0]
    assert out["chain"] == expected.text  # greedy: the same chain as in-process
    assert out["chain_label"] in (None, *LABELS)
    assert out["timings"]["model_ms"] > 0
    assert out["warnings"] == [
        "audio features (10x8) accepted but not used: this model reads text and images",
        "vision features (4x3) accepted but not used: this model reads text and images",
    ]


def test_concurrent_requests_share_a_batch(api, posts, local):
    bodies = [{"text": p["text"], "image": b64(p["image"])} for p in posts[:8]]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda b: post(f"{api}/v1/sentiment", b), bodies))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    sizes = [r.json()["timings"]["batch_size"] for r in replies]
    assert 1 < max(sizes) <= 4, sizes  # several requests answered by one forward pass, at most max_batch_size
    # Batching changes nothing in the answers (padding is masked).
    prompts_ = [prompts.render("label", {"text": p["text"], "task": "msc"}) for p in posts[:8]]
    expected = torch.softmax(local.label_logprobs(prompts_, [images.decode(p["image"]) for p in posts[:8]], LABELS), -1)
    for reply, row in zip(replies, expected.tolist()):
        got = list(reply.json()["probabilities"].values())
        assert max(abs(a - b) for a, b in zip(got, row)) < 1e-4


def test_a_bad_input_inside_a_batch_fails_alone(api, posts, local):
    """A truncated PNG passes the header checks and fails only when the model thread decodes it,
    inside a batch of good posts: it alone gets the 4xx, the others their exact answers."""
    truncated = posts[4]["image"][: len(posts[4]["image"]) // 2]
    good = posts[5:8]
    bodies = [{"text": p["text"], "image": b64(p["image"])} for p in good] + [{"text": "x", "image": b64(truncated)}]
    prompts_ = [prompts.render("label", {"text": p["text"], "task": "msc"}) for p in good]
    expected = torch.softmax(
        local.label_logprobs(prompts_, [images.decode(p["image"]) for p in good], LABELS), -1
    ).tolist()
    shared = 0
    for _ in range(10):  # rounds of four sent at once, until the bad one shared batches with good ones
        with ThreadPoolExecutor(4) as pool:
            *oks, bad = pool.map(lambda b: post(f"{api}/v1/sentiment", b), bodies)
        assert bad.status_code == 422, bad.text
        assert (
            "image file is truncated" in bad.json()["error"]["message"]
            and bad.json()["error"]["code"] == "unprocessable_input"
        )
        assert [r.status_code for r in oks] == [200, 200, 200], [r.text for r in oks]
        for reply, row in zip(oks, expected):
            assert max(abs(a - b) for a, b in zip(reply.json()["probabilities"].values(), row)) < 1e-4
            timings = reply.json()["timings"]
            if timings["batch_failures"]:
                assert timings["batch_failures"] == 1 and timings["batch_size"] >= 2
                shared += 1
        if shared >= 2:
            break
    assert shared >= 2  # good requests answered from batches the bad one was in


# --------------------------------------------------------------------------- OpenAI routes


def test_openai_client_chat_and_streaming(api, posts, local):
    import openai

    client = openai.OpenAI(base_url=f"{api}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["sentiray-student"]
    image_url = "data:image/png;base64," + b64(posts[2]["image"])
    messages = [
        {"role": "system", "content": "You judge sentiment."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": posts[2]["text"]},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        },
    ]
    done = client.chat.completions.create(model="sentiray-student", messages=messages, max_tokens=10)
    expected = local.generate([posts[2]["text"]], [images.decode(posts[2]["image"])], max_new_tokens=10)[0]
    assert done.choices[0].message.content == expected.text
    assert done.usage.completion_tokens == expected.new_tokens
    prompt_len = len(local.encoder.encode_prompt(posts[2]["text"], images.decode(posts[2]["image"])).input_ids)
    assert done.usage.prompt_tokens == prompt_len and done.usage.total_tokens == prompt_len + expected.new_tokens
    assert done.choices[0].finish_reason == ("length" if expected.new_tokens == 10 else "stop")
    assert done.system_fingerprint == "vlm"

    stream = client.chat.completions.create(
        model="sentiray-student", messages=messages, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == expected.text  # streamed piece by piece, the same greedy answer
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == expected.new_tokens and chunks[-1].usage.prompt_tokens == prompt_len

    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{api}/v1", api_key="nope", max_retries=0).models.list()


def test_server_sent_events_on_the_wire(api):
    body = {
        "model": "sentiray-student",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 6,
        "stream": True,
    }
    with post(f"{api}/v1/chat/completions", body, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"} and len({e["id"] for e in events}) == 1
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


# --------------------------------------------------------------------------- bad input


def _chat(**kw):
    body = {"model": "sentiray-student", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return body


GIF = b64(png(8, 8, fmt="GIF"))
BIG = b64(png(190, 190, noise=True))  # about 108 KB of noise: over the 100 000 byte limit
WIDE = b64(png(300, 10))


BAD = [
    # (route, body (dict) or raw bytes, status, fragment of the message)
    ("sentiment", b"{not json", 400, "not valid JSON"),
    ("sentiment", {"txt": "typo"}, 422, "txt: Extra inputs are not permitted"),
    ("sentiment", {"text": 3}, 422, "text: Input should be a valid string"),
    ("sentiment", {"text": "x" * 501}, 422, "text: 501 characters, the limit is 500"),
    ("sentiment", {"text": "x", "aspect": "a" * 41}, 422, "aspect: 41 characters, the limit is 40"),
    ("sentiment", {"text": "  "}, 422, "send text, an image or both"),
    ("sentiment", {"text": "x" * 450_000}, 413, "the limit is 400000"),
    ("sentiment", {"text": "x", "image": "!!!not base64!!!"}, 400, "image: not valid base64"),
    ("sentiment", {"text": "x", "image": b64(b"plain text, no picture")}, 400, "image: not an image"),
    ("sentiment", {"text": "x", "image": "data:image/png," + b64(png(8, 8))}, 400, "must be base64 encoded"),
    ("sentiment", {"text": "x", "image": "https://example.com/cat.png"}, 400, "image URLs are not fetched"),
    ("sentiment", {"text": "x", "image": GIF}, 415, "format GIF is not accepted"),
    ("sentiment", {"text": "x", "image": WIDE}, 422, "300x10 pixels, the limit is 256"),
    # What processors need, checked from the header before the model sees the image.
    ("sentiment", {"text": "x", "image": b64(png(3, 40))}, 422, "image: 3x40 pixels, each side needs at least 4"),
    ("sentiment", {"text": "x", "image": b64(png(250, 200))}, 422, "image: 50000 pixels (250x200), the limit is 40000"),
    (
        "sentiment",
        {"text": "x", "image": b64(png(210, 10))},
        422,
        "image: 210x10 pixels, aspect ratio 21.0, the limit is 20",
    ),
    (
        "sentiment",
        {"text": "x", "model": "other"},
        404,
        "model 'other' is not served here; this endpoint serves 'sentiray-student'",
    ),
    ("sentiment", {"text": "x", "audio": [[1.0, 2.0], [3.0]]}, 422, "audio: frame 1 has 1 numbers, frame 0 has 2"),
    ("sentiment", {"text": "x", "audio": [[0.0] * 4] * 51}, 422, "audio: 51 frames, the limit is 50"),
    ("sentiment", {"text": "x", "vision": [[0.0] * 17]}, 422, "vision: 17 numbers per frame, the limit is 16"),
    ("sentiment", {"text": "x", "vision": []}, 422, "vision: an empty sequence"),
    ("sentiment", {"text": "x", "audio": [["loud"]]}, 422, "audio[0][0]: Input should be a valid number"),
    ("sentiment", b'{"text": "x", "audio": [[NaN]]}', 422, "audio[0][0]: Input should be a finite number"),
    ("sentiment", {"text": "x", "chain": True, "max_tokens": 65}, 422, "max_tokens: 65 tokens asked, the limit is 64"),
    ("sentiment", {"text": "x", "max_tokens": 0}, 422, "max_tokens: Input should be greater than 0"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}]}, 422, "model: Field required"),
    ("chat", _chat(model="gpt-4o"), 404, "'gpt-4o' is not served here"),
    ("chat", _chat(messages=[]), 422, "messages: List should have at least 1 item"),
    ("chat", _chat(messages=[{"role": "system", "content": "be nice"}]), 400, "no message with role 'user'"),
    ("chat", _chat(messages=[{"role": "user", "content": "hi"}] * 9), 422, "9 messages, the limit is 8"),
    (
        "chat",
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
        400,
        "image URLs are not fetched",
    ),
    (
        "chat",
        _chat(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(png(8, 8))}}]
                    * 2,
                }
            ]
        ),
        400,
        "2 images, this model takes one per request",
    ),
    (
        "chat",
        _chat(
            messages=[
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
            ]
        ),
        422,
        "does not match any of the expected tags",
    ),
    ("chat", _chat(messages=[{"role": "user", "content": ""}]), 400, "no text and no image"),
    ("chat", _chat(n=2), 400, "only n=1 is supported"),
    ("chat", _chat(max_tokens=100), 422, "max_tokens: 100 tokens asked, the limit is 64"),
    ("chat", _chat(temperature=5), 422, "temperature: Input should be less than or equal to 2"),
    ("chat", _chat(messages=[{"role": "user", "content": "x" * 501}]), 422, "messages[0].content: 501 characters"),
]


def test_image_over_the_byte_limit_is_413(api):
    import base64

    assert len(base64.b64decode(BIG)) > 100_000
    r = post(f"{api}/v1/sentiment", {"text": "x", "image": BIG})
    assert r.status_code == 413 and "the limit is 100000" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("route, body, status, fragment", BAD, ids=[f"{b[0]}-{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_that_says_what_is_wrong(api, route, body, status, fragment):
    url = f"{api}/v1/sentiment" if route == "sentiment" else f"{api}/v1/chat/completions"
    if isinstance(body, bytes):
        r = requests.post(url, data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    else:
        r = post(url, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"], error
    assert error["type"] and error["code"]


def test_unknown_route_is_a_json_404(api):
    r = requests.get(f"{api}/v2/nothing", headers=AUTH, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


# --------------------------------------------------------------------------- overload


def test_overload_is_a_503_with_retry_after(api, posts):
    """8 requests in the replica (batches of 4), 16 queued, the rest refused at once: 503 + Retry-After, never 500."""
    body = {"text": posts[3]["text"], "image": b64(posts[3]["image"]), "chain": True, "max_tokens": 64}
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda _: post(f"{api}/v1/sentiment", body), range(64)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in replies if r.status_code == 503]
    assert refused and statuses.count(200) >= 8, statuses
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
    # The endpoint recovers at once.
    assert post(f"{api}/v1/sentiment", {"text": "fine again"}).status_code == 200
