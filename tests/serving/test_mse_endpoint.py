"""MSE-Adapter's /v1/sentiment over real HTTP (Ray Serve on a local cluster): two adapters, a
regression one and an ERC one, multiplexed on one replica and ONE frozen backbone; bad features
answered 4xx naming the field while good requests sent with them are answered.

The adapters are built in-process from the tiny causal LM (the family's own build_model, random
adapter weights: this tests serving, not accuracy) and written by the family's own export plus
the manifest training writes, so the served format is the real one. The ERC adapter reads other
feature widths than the regression one, so each request is checked against its own adapter.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from sentiray import config, families
from sentiray.data import schema, synthetic
from sentiray.serving.app import IMPORT_PATH
from tests.serving.conftest import deploy

pytestmark = pytest.mark.slow

HEADER = "serve_multiplexed_model_id"
ADAPTER = {"width": 32, "audio_hidden": 16, "vision_hidden": 8}
# id -> (task, adapter feature widths); synthetic features are 20 (audio) x 12 (vision) wide.
ADAPTERS = {"mosei": ("msa", {"audio": 20, "vision": 12}), "meld": ("erc", {"audio": 16, "vision": 10})}
MAX_FRAMES = 48  # limits.max_feature_frames of the app (synthetic sequences have at most 40 frames)


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    """{id: exported adapter folder} and {id: test rows with features of that adapter's widths}."""
    root = tmp_path_factory.mktemp("mse-serve")
    folders, rows = {}, {}
    for seed, (model_id, (task, widths)) in enumerate(ADAPTERS.items()):
        data = synthetic.generate(task, 30, seed=seed)
        schema.write_dataset(data, str(root / "data" / task))
        cfg = config.validate(
            {
                "stage": "train",
                "storage": {"root": str(root)},
                "data": {"format": "canonical", "input": f"data/{task}"},
                "model": {"path": tiny_models["causal_lm"], "kind": "causal_lm"},
                "mse_adapter": {**ADAPTER, "audio_dim": widths["audio"], "vision_dim": widths["vision"]},
                "train": {"family": "mse_adapter", "output": f"ckpt/{task}"},
            }
        )
        family = families.create(cfg)
        torch.manual_seed(seed)
        model = family.build_model()
        folder = root / model_id
        folder.mkdir()
        family.export(model.eval(), str(folder))
        families.write_manifest(str(folder), family.manifest(), type(family))
        folders[model_id] = str(folder)
        rows[model_id] = [
            {
                "text": r["text"],
                "audio": r["audio"][:, : widths["audio"]].tolist(),
                "vision": r["vision"][:, : widths["vision"]].tolist(),
            }
            for r in data.splits["train"][:6]
        ]
    return folders, rows


@pytest.fixture(scope="module")
def mse(serve_base, adapters, tmp_path_factory):
    from ray import serve

    application = {
        "name": "mse",
        "route_prefix": "/mse",
        "import_path": IMPORT_PATH,
        "args": {
            "models": adapters[0],
            "max_models_per_replica": 2,
            "min_replicas": 1,
            "max_replicas": 1,
            "max_batch_size": 8,
            "limits": {"max_feature_frames": MAX_FRAMES},
        },
    }
    url = deploy(tmp_path_factory.mktemp("mse"), serve_base, application)
    yield url
    serve.delete("mse")


@pytest.fixture(scope="module")
def local(adapters):
    """Both adapters loaded in this process: the reference answers."""
    return {model_id: families.load_predictor(folder) for model_id, folder in adapters[0].items()}


def sentiment(url, body, model=None):
    headers = {"Content-Type": "application/json", **({HEADER: model} if model else {})}
    # json.dumps writes NaN and Infinity as JavaScript does (requests' json= refuses them): what such a
    # client sends, for the server to refuse.
    return requests.post(f"{url}/v1/sentiment", data=json.dumps(body), headers=headers, timeout=60)


def check_answer(answer, model_id, row, local):
    import numpy as np

    assert answer["model"] == {"id": model_id, "name": model_id, "version": None}
    expected = local[model_id].predict(
        [
            {
                "text": row["text"],
                "audio": np.asarray(row["audio"], np.float32),
                "vision": np.asarray(row["vision"], np.float32),
            }
        ]
    )[0]
    if ADAPTERS[model_id][0] == "msa":
        assert answer["task"] == "msa" and answer["label"] is None and answer["probabilities"] is None
        assert isinstance(answer["score"], float) and math.isfinite(answer["score"])
        assert answer["score"] == expected["score"] and answer["answer"] == expected["answer"]
        assert answer["unparseable"] == expected["unparseable"]
    else:
        labels = list(local[model_id].labels)
        assert answer["task"] == "erc" and answer["score"] is None
        assert answer["label"] in labels and list(answer["probabilities"]) == labels
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert max(abs(answer["probabilities"][k] - v) for k, v in expected["probs"].items()) < 1e-4
        assert answer["label"] == expected["label"]


def test_two_adapters_answer_from_one_replica_and_one_backbone(mse, adapters, local):
    from ray import serve

    _, rows = adapters
    # The regression adapter alone first: the replica holds one backbone.
    first = sentiment(mse, rows["mosei"][0], "mosei")
    assert first.status_code == 200, first.text
    check_answer(first.json(), "mosei", rows["mosei"][0], local)
    backbone = first.json()["backbone"]
    assert backbone["loaded_in_replica"] == 1 and backbone["name"] == "causal_lm"
    assert (backbone["dtype"], backbone["device"]) == ("float32", "cpu") and backbone["replica"]

    # Then mixed traffic for both (header and body field), all at once: still that one backbone.
    calls = [(m, i, how) for i in range(1, 5) for m in ADAPTERS for how in ("header", "body")]
    with ThreadPoolExecutor(6) as pool:
        replies = list(
            pool.map(
                lambda c: (
                    sentiment(mse, rows[c[0]][c[1]], c[0])
                    if c[2] == "header"
                    else sentiment(mse, {**rows[c[0]][c[1]], "model": c[0]})
                ),
                calls,
            )
        )
    for (model_id, i, _), reply in zip(calls, replies):
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        check_answer(answer, model_id, rows[model_id][i], local)
        assert answer["backbone"] == backbone  # same replica, same single frozen backbone for both adapters

    # ERC the paper's way too (the greedy answer parsed); a regression adapter refuses the option.
    r = sentiment(mse, {**rows["meld"][0], "decode": "generate"}, "meld")
    assert r.status_code == 200 and r.json()["label"] in local["meld"].labels, r.text
    r = sentiment(mse, {**rows["mosei"][0], "decode": "generate"}, "mosei")
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("decode:"), r.text
    status = serve.status().applications["mse"].deployments["SentimentModel"]
    assert status.replica_states.get("RUNNING") == 1  # both adapters on one replica
    # What the replica reports is the family's per-process cache, and loading puts adapters on its one copy:
    # the same load path in this process gives both adapters the very same backbone object.
    from sentiray.families.mse_adapter import loaded_backbones

    assert local["mosei"].model.backbone is local["meld"].model.backbone
    assert local["mosei"].model.adapter is not local["meld"].model.adapter
    # (other tests in this process may hold other backbones: count the copies of this one)
    held = [key[0] for key in loaded_backbones()]
    assert held.count(local["meld"].manifest["backbone"]) == 1
    r = sentiment(mse, rows["mosei"][0])
    assert r.status_code == 400 and "model: name one of ['meld', 'mosei']" in r.json()["error"]["message"]


def _bad(rows):
    """(adapter, body, status, the start of the message naming the field)."""
    good, erc = rows["mosei"][0], rows["meld"][0]
    nan_vision = [list(f) for f in good["vision"]]
    nan_vision[3][1] = float("nan")
    inf_audio = [list(f) for f in good["audio"]]
    inf_audio[0][0] = float("inf")
    huge = [list(f) for f in good["vision"]]
    huge[2][0] = 1e39  # a finite JSON number, infinite as float32
    ragged = [list(f) for f in good["audio"]]
    ragged[1] = ragged[1][:-1]
    no_text = {k: v for k, v in good.items() if k != "text"}
    return [
        ("meld", {**erc, "audio": good["audio"]}, 422, "audio: frames of 20 numbers, this adapter reads 16"),
        ("mosei", {**good, "vision": erc["vision"]}, 422, "vision: frames of 10 numbers, this adapter reads 12"),
        ("mosei", {**good, "vision": nan_vision}, 422, "vision[3][1]: Input should be a finite number"),
        ("mosei", {**good, "audio": inf_audio}, 422, "audio[0][0]: Input should be a finite number"),
        ("mosei", {**good, "vision": huge}, 422, "vision: frame 2 holds a value beyond float32's range"),
        (
            "mosei",
            {**good, "audio": [good["audio"][0]] * (MAX_FRAMES + 1)},
            422,
            f"audio: {MAX_FRAMES + 1} frames, the limit is {MAX_FRAMES}",
        ),
        ("meld", {k: v for k, v in erc.items() if k != "vision"}, 422, "vision: missing; this adapter reads vision"),
        ("mosei", {**good, "audio": []}, 422, "audio: an empty sequence"),
        ("mosei", {**good, "audio": ragged}, 422, "audio: frame 1 has 19 numbers"),
        ("mosei", {**good, "text": "  "}, 422, "text: empty"),
        ("mosei", no_text, 422, "text: Field required"),
        ("meld", {**erc, "audios": erc["audio"]}, 422, "audios: Extra inputs are not permitted"),
    ]


def test_bad_features_are_4xx_naming_the_field_while_good_requests_beside_them_answer(mse, adapters, local):
    _, rows = adapters
    bad = _bad(rows)
    good = [(m, rows[m][i]) for i in range(3) for m in ADAPTERS]
    # One volley, bad and good requests interleaved, concurrently on the one replica.
    volley = [("bad", b) for b in bad]
    for j, g in enumerate(good):
        volley.insert(2 * j, ("good", g))
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda v: sentiment(mse, v[1][1], v[1][0]), volley))
    batch_sizes = []
    for (kind, case), reply in zip(volley, replies):
        if kind == "good":
            assert reply.status_code == 200, reply.text
            check_answer(reply.json(), case[0], case[1], local)
            batch_sizes.append(reply.json()["timings"]["batch_size"])
        else:
            model_id, _, status, message = case
            assert reply.status_code == status, (message, reply.text)
            error = reply.json()["error"]
            assert error["message"].startswith(message), (message, error)
    assert len(batch_sizes) == len(good) and min(batch_sizes) >= 1
