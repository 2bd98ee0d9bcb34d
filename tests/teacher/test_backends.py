"""Teacher backends: the hf model answers by key; the OpenAI-compatible client retries and counts."""

import io
import random

import pytest
from PIL import Image

from sentiray import prompts
from sentiray.config import TeacherConfig
from sentiray.data import synthetic
from sentiray.data.images import ImageError
from sentiray.teacher import backends
from sentiray.teacher.backends import Request
from tests.conftest import free_port
from tests.teacher.openai_server import ServerProcess


def _rows(n):
    return synthetic.generate("msc", 40, seed=2).splits["train"][:n]


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_hf_backend_answers_each_request_by_key(tiny_models):
    backend = backends.HFBackend(tiny_models["vlm"], max_new_tokens=8, temperature=1.0, batch_size=2, seed=0)
    rows = _rows(3)
    reqs = [Request(f"r{i}", prompts.render("chain", r), r["image"]) for i, r in enumerate(rows)]
    reqs.append(Request("short", "Explain the text in one sentence.", None, max_new_tokens=3))
    reqs.append(Request("broken", "Describe this image.", b"\x89PNG not really"))
    out = backend.answer(reqs)
    assert [a.key for a in out] == ["r0", "r1", "r2", "short", "broken"]
    for a in out[:3]:
        assert a.error is None and a.text and 0 < a.tokens <= 8
    assert out[3].error is None and 0 < out[3].tokens <= 3
    assert out[4].text is None and out[4].error.startswith("unreadable image: cannot decode image")


def test_backoff_is_jittered_exponential_and_capped():
    rng = random.Random(0)
    for attempt in range(8):
        bound = min(5.0, 0.5 * 2**attempt)
        delays = [backends.backoff_delay(attempt, 0.5, 5.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound  # jitter spreads over the range
    # Retry-After is a floor, capped by the maximum wait
    assert backends.backoff_delay(0, 0.5, 5.0, retry_after=3.0, rng=rng) >= 3.0
    assert backends.backoff_delay(0, 0.5, 5.0, retry_after=60.0, rng=rng) == 5.0


def test_image_data_urls_keep_common_formats():
    assert backends.image_data_url(_image("PNG")).startswith("data:image/png;base64,")
    assert backends.image_data_url(_image("JPEG")).startswith("data:image/jpeg;base64,")
    assert backends.image_data_url(_image("BMP")).startswith("data:image/png;base64,")  # re-encoded
    with pytest.raises(ImageError):
        backends.image_data_url(b"not an image")
    msgs = backends.chat_messages("hi", _image("PNG"))
    assert msgs[0]["content"][0]["type"] == "image_url" and msgs[0]["content"][1] == {"type": "text", "text": "hi"}
    assert backends.chat_messages("hi", None) == [{"role": "user", "content": "hi"}]


@pytest.mark.skipif(backends.vllm_installed(), reason="vllm is installed here")
def test_vllm_reported_unavailable():
    cfg = TeacherConfig(backend="vllm", model={"path": "/nowhere"})
    with pytest.raises(backends.BackendUnavailable, match="pip install vllm"):
        backends.make_backend(cfg)


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("faults") / "faults.txt")
    with ServerProcess(tiny_models["vlm"], free_port(), faults_log=log, max_tokens_cap=16) as srv:
        yield srv


def _client(server, **kw):
    options = {
        "model": "tiny-teacher",
        "max_new_tokens": 6,
        "temperature": 1.0,
        "concurrency": 4,
        "timeout_s": 5,
        "max_retries": 8,
        "backoff_s": 0.05,
        "backoff_max_s": 0.2,
    }
    options.update(kw)
    endpoint = options.pop("endpoint", server.url)
    return backends.OpenAIBackend(endpoint, **options)


@pytest.mark.slow
def test_openai_backend_retries_429_and_5xx_and_counts_them(server):
    server.control(p429=0.3, p500=0.2, pslow=0.0, delay_s=0.05, max_in_flight=0)
    before = server.faults()
    rows = _rows(12)
    reqs = [Request(r["id"], prompts.render("chain", r), r["image"] if i % 2 else None) for i, r in enumerate(rows)]
    out = _client(server).answer(reqs)
    server.control(p429=0.0, p500=0.0, delay_s=0.0)
    injected = server.faults() - before
    assert 2 <= server.health()["max_in_flight"] <= 4  # concurrent, and never more than the bound
    assert [a.key for a in out] == [r["id"] for r in rows]
    assert all(a.error is None and a.text and 0 < a.tokens <= 6 for a in out)
    # every injected fault cost exactly one retry, counted by cause
    assert injected["429"] + injected["500"] > 0
    assert sum(a.retry_causes.get("429", 0) for a in out) == injected["429"]
    assert sum(a.retry_causes.get("5xx", 0) for a in out) == injected["500"]
    assert sum(a.retries for a in out) == injected["429"] + injected["500"]


@pytest.mark.slow
def test_openai_backend_times_out_gives_up_and_does_not_retry_4xx(server):
    req = Request("x", "Say something.", None)
    # slow answers: timeouts, retried, then given up with the reason
    server.control(pslow=1.0, slow_s=1.5)
    [a] = _client(server, timeout_s=0.3, max_retries=2).answer([req])
    server.control(pslow=0.0)
    assert a.text is None and a.retries == 2 and a.retry_causes == {"timeout": 2}
    assert a.error.startswith("teacher error: gave up after 2 retries (last: no answer within 0.3s)")
    # always 500: gives up after max_retries
    server.control(p500=1.0)
    [a] = _client(server, max_retries=3).answer([req])
    server.control(p500=0.0)
    assert a.retry_causes == {"5xx": 3} and "HTTP 500" in a.error
    # a wrong route is the request's fault: no retry
    [a] = _client(server, endpoint=server.url.replace("/v1", "/nope")).answer([req])
    assert a.retries == 0 and a.error.startswith("teacher error: HTTP 404")
    # nobody listening: connection errors are retried, then reported
    [a] = _client(server, endpoint=f"http://127.0.0.1:{free_port()}/v1", max_retries=2).answer([req])
    assert a.retry_causes == {"connection": 2} and "cannot connect" in a.error
    # and the server still answers normally afterwards
    [a] = _client(server).answer([req])
    assert a.error is None and a.text
