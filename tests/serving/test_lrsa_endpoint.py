"""LRSA's endpoints over real HTTP (Ray Serve on a local cluster): /v1/aspects and /v1/sentiment
with rationales in the request, from a loopback teacher endpoint, and from none (the teacher
missing, slow or down: the answer still comes within its timeout, and says so); bad input.

The model is an LRSA model fitted here in-process for a few epochs (the family's own code) on
synthetic posts with a perfect teacher's rationales; the teacher is tests/teacher/openai_server.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
import yaml

from sentiray import config, families
from sentiray.data import schema, synthetic
from sentiray.models.tiny import build_tiny_vision
from sentiray.serving.app import IMPORT_PATH
from tests.conftest import free_port
from tests.serving.conftest import b64, png
from tests.teacher.openai_server import ServerProcess

pytestmark = pytest.mark.slow

TEACHER_ANSWER = (
    "The image shows a yellow smiling face (large, centre) on a textured beige background; it conveys a "
    "cheerful, positive mood."
)
TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """(model folder, test rows): an LRSA mabsa model fitted in-process, exported as training exports."""
    root = tmp_path_factory.mktemp("lrsa-serve")
    data = synthetic.generate("mabsa", 300, seed=2)
    for rows in data.splits.values():
        for row in rows:
            row.update(synthetic.aspect_rationales(row))
    schema.write_dataset(data, str(root / "data"))
    cfg = config.validate(
        {
            "stage": "train",
            "storage": {"root": str(root)},
            "data": {"format": "canonical", "input": "data"},
            "model": {"path": tiny_models["encoder"], "kind": "encoder"},
            "lrsa": {"vision_model": build_tiny_vision(str(root / "vision")), "rationale_dropout": 0.3},
            "train": {"family": "lrsa"},
        }
    )
    family = families.create(cfg)
    torch.manual_seed(0)
    model = family.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    examples = [
        e for e in (family.transform(r) for r in schema.read_rows(str(root / "data"), "train")) if "skip" not in e
    ]
    for _ in range(4):
        for i in range(0, len(examples), 16):
            loss, _ = family.loss(model, family.collate(examples[i : i + 16]))
            loss.backward()
            opt.step()
            opt.zero_grad()
    out = root / "model"
    out.mkdir()
    family.export(model.eval(), str(out))
    families.write_manifest(str(out), family.manifest(), type(family))
    return str(out), schema.read_rows(str(root / "data"), "test")


@pytest.fixture(scope="module")
def teacher(tiny_models):
    with ServerProcess(tiny_models["vlm"], free_port(), answer=TEACHER_ANSWER) as server:
        yield server


def application(name: str, model: str, endpoint: dict) -> dict:
    return {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": IMPORT_PATH,
        "args": {
            "model": model,
            "served_model_name": "lrsa",
            "endpoint": endpoint,
            "max_batch_size": 8,
            "max_concurrent_generations": 4,
            "min_replicas": 1,
            "max_replicas": 1,
            "limits": {"max_image_bytes": 60_000, "max_image_side": 512},
        },
        "deployments": [{"name": "SentimentModel", "ray_actor_options": {"num_cpus": 1}}],
    }


@pytest.fixture(scope="module")
def apps(serve_base, trained, teacher, tmp_path_factory):
    from ray import serve

    from sentiray.serving.app import serve_config_file

    host, port = serve_base.removeprefix("http://").split(":")
    # One Serve config with both apps: a deploy replaces the apps a config does not list.
    apps = [
        application("lrsa-plain", trained[0], {}),
        application(
            "lrsa-taught",
            trained[0],
            {"teacher_url": teacher.url, "teacher_timeout_s": TIMEOUT_S, "teacher_max_in_flight": 2},
        ),
    ]
    path = tmp_path_factory.mktemp("lrsa-apps") / "lrsa.yaml"
    path.write_text(yaml.safe_dump({"http_options": {"host": host, "port": int(port)}, "applications": apps}))
    urls = serve_config_file(str(path), blocking=False)["apps"]
    yield {"plain": urls["lrsa-plain"], "taught": urls["lrsa-taught"]}
    for name in ("lrsa-plain", "lrsa-taught"):
        serve.delete(name)


def post(url, body):
    return requests.post(url, json=body, timeout=60)


def body_of(row, rationales=True):
    body = {"text": row["text"], "image": b64(row["image"])}
    if rationales:
        body.update(text_explanation=row["text_explanation"], image_description=row["image_description"])
    return body


def spans_of(answer):
    return [(a["start"], a["end"], a["polarity"]) for a in answer["aspects"]]


def test_aspects_with_rationales_in_the_request(apps, trained):
    _, rows = trained
    right = 0
    for row in rows[:10]:
        r = post(f"{apps['plain']}/v1/aspects", body_of(row))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["without_rationales"] is False
        assert {k: v["source"] for k, v in answer["rationales"].items()} == {
            "text_explanation": "given",
            "image_description": "given",
        }
        for a in answer["aspects"]:
            assert answer["words"][a["start"] : a["end"]] == a["term"].split() and 0 < a["probability"] <= 1
        right += spans_of(answer) == [(s["start"], s["end"], s["polarity"]) for s in row["spans"]]
    assert right >= 6, right  # exact JMASA match per post; random tags would get none


def test_without_rationales_or_teacher_the_answer_says_so(apps, trained):
    row = trained[1][0]
    answer = post(f"{apps['plain']}/v1/aspects", body_of(row, rationales=False)).json()
    assert answer["without_rationales"] is True
    assert all(v["source"] == "none" and "no teacher" in v["reason"] for v in answer["rationales"].values())
    assert isinstance(answer["aspects"], list)


def test_a_teacher_endpoint_writes_the_missing_rationales(apps, trained, teacher):
    row = trained[1][1]
    before = teacher.health()["served"]
    body = {**body_of(row, rationales=False), "text_explanation": row["text_explanation"]}  # one given, one not
    answer = post(f"{apps['taught']}/v1/aspects", body).json()
    assert answer["rationales"]["text_explanation"]["source"] == "given"
    assert answer["rationales"]["image_description"] == {"source": "teacher", "text": TEACHER_ANSWER, "reason": None}
    assert teacher.health()["served"] == before + 1  # only the missing one was asked
    # every rationale given: the teacher is not called at all
    post(f"{apps['taught']}/v1/aspects", body_of(row))
    assert teacher.health()["served"] == before + 1
    # calls in flight are bounded per replica (teacher_max_in_flight: 2)
    teacher.control(max_in_flight=0, delay_s=0.1)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda r: post(f"{apps['taught']}/v1/aspects", body_of(r, False)).json(), trained[1][:4])
        )
    teacher.control(delay_s=0.0)
    assert all(a["rationales"]["text_explanation"]["source"] == "teacher" for a in answers)
    assert 1 <= teacher.health()["max_in_flight"] <= 2


def test_a_slow_teacher_costs_at_most_its_timeout(apps, trained, teacher):
    row = trained[1][2]
    teacher.control(pslow=1.0, slow_s=6.0)
    try:
        start = time.perf_counter()
        r = post(f"{apps['taught']}/v1/aspects", body_of(row, rationales=False))
        elapsed = time.perf_counter() - start
    finally:
        teacher.control(pslow=0.0)
    assert r.status_code == 200 and elapsed < TIMEOUT_S + 3.0, elapsed
    answer = r.json()
    assert answer["without_rationales"] is True
    assert all(f"within {TIMEOUT_S:g} s" in v["reason"] for v in answer["rationales"].values())


def test_a_teacher_that_is_down_answers_without_rationales(apps, trained, teacher):
    teacher.kill()
    try:
        start = time.perf_counter()
        r = post(
            f"{apps['taught']}/v1/sentiment",
            {**body_of(trained[1][3], False), "aspect": trained[1][3]["text"].split()[0]},
        )
        elapsed = time.perf_counter() - start
    finally:
        teacher.start()
    assert r.status_code == 200 and elapsed < TIMEOUT_S + 3.0
    answer = r.json()
    assert answer["without_rationales"] is True
    assert all("the teacher failed" in v["reason"] for v in answer["rationales"].values())


def test_sentiment_of_an_aspect(apps, trained):
    row = next(r for r in trained[1] if r["spans"])
    span = row["spans"][0]
    aspect = " ".join(row["words"][span["start"] : span["end"]])
    answer = post(f"{apps['plain']}/v1/sentiment", {**body_of(row), "aspect": aspect}).json()
    assert answer["label"] in ("positive", "neutral", "negative")
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "route,change,status,field",
    [
        ("aspects", {"text": "   "}, 422, "text: empty"),
        ("sentiment", {"aspect": "Nobody Atall"}, 422, "aspect: 'Nobody Atall' does not occur"),
        ("sentiment", {"aspect": ""}, 422, "aspect: empty"),
        ("aspects", {"image": b64(png(400, 400, noise=True))}, 413, "image"),
        ("aspects", {"image": "not base64!"}, 400, "image"),
        ("aspects", {"txt": "typo"}, 422, "txt"),
    ],
)
def test_bad_input_is_a_4xx_naming_it(apps, trained, route, change, status, field):
    row = trained[1][0]
    body = (
        {**body_of(row), "aspect": row["text"].split()[0], **change}
        if route == "sentiment"
        else {**body_of(row), **change}
    )
    r = post(f"{apps['plain']}/v1/{route}", body)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]["message"]
