"""The synthetic generator: format, determinism, and a signal that simple models can learn."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from sentiray.data import schema, synthetic
from sentiray.data.schema import CHAIN_FIELDS, EMOTION_LABELS, SENTIMENT_LABELS, SPLITS, TASKS
from sentiray.data.synthetic import format_chain, fuse, generate, parse_chain


def all_rows(data: schema.PreparedDataset) -> list[dict]:
    return [r for split in SPLITS for r in data.splits[split]]


def comparable(rows: list[dict]) -> list[dict]:
    """Feature arrays (float32 T x D) as (dtype, shape, bytes), so that == compares rows exactly."""

    def key(v):
        return (str(v.dtype), v.shape, v.tobytes()) if isinstance(v, np.ndarray) else v

    return [{k: key(v) for k, v in row.items()} for row in rows]


def meta(row: dict) -> dict:
    return json.loads(row["meta"])


@pytest.fixture(scope="module")
def small() -> dict[str, schema.PreparedDataset]:
    """A few hundred rows of every task."""
    return {task: generate(task, 300, seed=11) for task in TASKS}


@pytest.fixture(scope="module")
def msc_big() -> schema.PreparedDataset:
    return generate("msc", 3000, seed=7)


# --------------------------------------------------------------------------- chain format


def test_format_chain_has_the_exact_shape():
    fields = {
        "Text_analysis": 'says "great"',
        "Image_analysis": "a sun\nover a field",
        "Conflict_resolution": "none",
        "Final_conclusion": "positive overall",
        "Prediction": "positive",
    }
    text = format_chain(fields)
    lines = text.split("\n")
    assert len(lines) == 5
    for name, line in zip(CHAIN_FIELDS, lines):
        assert line.startswith(f'"{name}": "')
    assert all(line.endswith('",') for line in lines[:-1]) and lines[-1] == '"Prediction": "positive"'
    assert parse_chain(text) == fields  # quotes and newlines survive the round trip
    assert json.loads("{" + text + "}") == fields  # braces make it plain JSON
    with pytest.raises(ValueError):
        format_chain({k: v for k, v in fields.items() if k != "Prediction"})


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"Text_analysis": "t", "Image_analysis": "i", "Conflict_resolution": "c", '
        '"Final_conclusion": "f", "Prediction": "negative"}\n```',
        "Text analysis: t\nImage-analysis: i\nconflict_resolution: c\nFinal_conclusion: f\nPrediction: Negative.",
        'Sure! "Text_analysis": "t",\n"Image_analysis": "i",\n"Conflict_resolution": "c",\n'
        '"Final_conclusion": "f",\n"Prediction": "negative"\nHope this helps.',
    ],
)
def test_parse_chain_is_tolerant(text):
    parsed = parse_chain(text)
    assert parsed["Prediction"].startswith("negative")
    assert parsed["Text_analysis"] == "t" and parsed["Final_conclusion"] == "f"


def test_parse_chain_of_nothing_is_empty():
    assert parse_chain("") == {}
    assert parse_chain("no fields here") == {}


# --------------------------------------------------------------------------- general


def test_same_seed_same_rows_other_seed_other_rows():
    for task in TASKS:
        a, b, c = generate(task, 40, seed=3), generate(task, 40, seed=3), generate(task, 40, seed=4)
        assert comparable(all_rows(a)) == comparable(all_rows(b)), task  # byte-identical, images included
        assert comparable(all_rows(a)) != comparable(all_rows(c)), task


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", [1, 2, 7, 101])
def test_split_counts_sum_to_size(task, size):
    data = generate(task, size, seed=0)
    counts = {s: len(data.splits[s]) for s in SPLITS}
    assert sum(counts.values()) == size
    assert counts == synthetic.split_counts(size, (0.8, 0.1, 0.1))
    ids = [r["id"] for r in all_rows(data)]
    assert len(set(ids)) == size
    for split in SPLITS:
        assert [r["id"] for r in data.splits[split]] == [
            f"synthetic-{task}-{split}-{i:06d}" for i in range(counts[split])
        ]


def test_split_ratios_and_bad_arguments():
    data = generate("msc", 100, split_ratios=(0.5, 0.3, 0.2))
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 50, "dev": 30, "test": 20}
    with pytest.raises(schema.DataError):
        generate("nope", 10)
    with pytest.raises(schema.DataError):
        generate("msc", 0)
    with pytest.raises(schema.DataError):
        generate("msc", 10, split_ratios=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("task", TASKS)
def test_rows_validate_and_chains_are_true_to_the_label(small, task):
    data = small[task]
    assert data.source == "synthetic" and data.task == task
    rows = all_rows(data)
    table = schema.to_table(rows)
    assert table.num_rows == len(rows) and table.schema == schema.CANONICAL_SCHEMA
    labels = set(schema.labels_for(task)) if task != "mabsa" else {None}
    for row in rows:
        assert row["task"] == task and row["source"] == "synthetic" and row["text"]
        assert row["label"] in (labels if task != "msa" else set(SENTIMENT_LABELS))
        chain = parse_chain(row["gold_chain"])
        assert list(chain) == list(CHAIN_FIELDS)
        if task == "mabsa":
            expected = row["spans"][0]["polarity"] if row["spans"] else "neutral"
        else:
            expected = row["label"]
        assert chain["Prediction"] == expected
        assert isinstance(meta(row), dict)


@pytest.mark.parametrize("task,size", [("msc", 64), ("masc", 32)])
def test_images_are_pngs_of_the_asked_size(task, size):
    for row in all_rows(generate(task, 12, seed=1, image_size=size)):
        img = Image.open(io.BytesIO(row["image"]))
        assert img.format == "PNG" and img.size == (size, size) and img.mode == "RGB"


# --------------------------------------------------------------------------- per task


def test_fusion_rule_table():
    assert fuse("positive", "positive") == ("positive", "agree")
    assert fuse("positive", "neutral")[0] == "positive"
    assert fuse("neutral", "negative")[0] == "negative"
    assert fuse("positive", "negative") == ("negative", "irony")
    assert fuse("negative", "positive")[0] == "negative"


def test_msc_conflicts_follow_the_fusion_rule(msc_big):
    rows = all_rows(msc_big)
    metas = [meta(r) for r in rows]
    share = np.mean([m["conflict"] for m in metas])
    assert 0.2 <= share <= 0.35
    assert msc_big.notes["conflicting_posts"] == sum(m["conflict"] for m in metas)
    for row, m in zip(rows, metas):
        assert m["conflict"] == (m["text_sentiment"] != m["image_sentiment"])
        assert row["label"] == fuse(m["text_sentiment"], m["image_sentiment"])[0]
        main = [s for s in m["shapes"] if s["role"] == "main"]
        assert len(main) == 1 and main[0]["sentiment"] == m["image_sentiment"]
        for cue in m["cue_words"]:
            assert cue in row["text"].split()
    # every ordered pair of differing sentiments occurs
    pairs = {(m["text_sentiment"], m["image_sentiment"]) for m in metas if m["conflict"]}
    assert len(pairs) == 6


def test_masc_rows_are_per_aspect(small):
    rows = all_rows(small["masc"])
    by_post: dict[int, list[dict]] = {}
    for row in rows:
        m = meta(row)
        assert row["aspect"] in row["text"]
        assert row["aspect"] == m["aspects"][m["target"]]["term"]
        assert row["label"] == m["aspects"][m["target"]]["polarity"]
        assert m["image_sentiment"] == m["aspects"][0]["polarity"]  # the picture goes with the main aspect
        by_post.setdefault(m["group"], []).append(row)
    two = [r for r in by_post.values() if len(r) == 2]
    assert two and any(a["label"] != b["label"] for a, b in two)
    for post_rows in by_post.values():  # a post's rows share text and image, and one split
        assert len({r["text"] for r in post_rows}) == 1 and len({r["image"] for r in post_rows}) == 1
        assert len({r["id"].rsplit("-", 2)[1] for r in post_rows}) == 1


def test_mabsa_spans_index_words(small):
    rows = all_rows(small["mabsa"])
    for row in rows:
        assert row["label"] is None and row["text"] == " ".join(row["words"])
        terms = [a["term"] for a in meta(row)["aspects"]]
        assert len(row["spans"]) == len(terms)
        for span, term in zip(row["spans"], terms):
            assert 0 <= span["start"] < span["end"] <= len(row["words"])
            assert " ".join(row["words"][span["start"] : span["end"]]) == term
            assert span["polarity"] in SENTIMENT_LABELS
    assert any(len(r["spans"]) == 2 for r in rows)


def test_msa_scores_and_feature_shapes(small):
    rows = all_rows(small["msa"])
    scores = [r["score"] for r in rows]
    assert all(-3.0 <= s <= 3.0 for s in scores)
    assert any(s == 0.0 for s in scores)
    lengths_a, lengths_v = set(), set()
    for row in rows:
        s = row["score"]
        assert row["label"] == ("positive" if s > 0 else "negative" if s < 0 else "neutral")
        assert row["image"] is None
        audio, vision = np.asarray(row["audio"]), np.asarray(row["vision"])
        assert audio.shape[1] == 20 and 10 <= audio.shape[0] <= 40
        assert vision.shape[1] == 12 and 8 <= vision.shape[0] <= 30
        lengths_a.add(audio.shape[0])
        lengths_v.add(vision.shape[0])
    assert len(lengths_a) > 5 and len(lengths_v) > 5
    assert any(meta(r)["flat_text"] for r in rows)  # some texts leave the score to the features


def test_erc_dialogues(small):
    rows = all_rows(small["erc"])
    dialogues: dict[int, list[tuple[str, dict]]] = {}
    for row in rows:
        m = meta(row)
        assert row["label"] == m["emotion"] and m["speaker"] in synthetic.SPEAKERS
        assert np.asarray(row["audio"]).shape[1] == 20 and np.asarray(row["vision"]).shape[1] == 12
        dialogues.setdefault(m["dialogue_id"], []).append((row["id"].rsplit("-", 2)[1], m))
    for utts in dialogues.values():
        assert len({split for split, _ in utts}) == 1
        assert [m["utterance_id"] for _, m in utts] == list(range(len(utts)))
    assert set(r["label"] for r in rows) == set(EMOTION_LABELS)


# --------------------------------------------------------------------------- learnable signal


def summary(seq) -> np.ndarray:
    """Mean, spread and roughness of each feature dim over time."""
    a = np.asarray(seq, dtype=np.float32)
    return np.concatenate([a.mean(0), a.std(0), np.abs(np.diff(a, axis=0)).mean(0)])


def image_features(rows) -> np.ndarray:
    """An 8x8 thumbnail plus a 64-bin colour histogram of each decoded PNG."""
    out = []
    for row in rows:
        img = Image.open(io.BytesIO(row["image"])).convert("RGB")
        thumb = np.asarray(img.resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() / 255
        q = np.asarray(img) // 64
        hist = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / q[..., 0].size
        out.append(np.concatenate([thumb, hist]))
    return np.asarray(out)


def bag_of_words(train, test):
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(token_pattern=r"[^\s]+")
    return vec.fit_transform([r["text"] for r in train]), vec.transform([r["text"] for r in test])


def test_msc_each_modality_learns_and_fusion_wins_on_conflicts(msc_big):
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, test = msc_big.splits["train"], msc_big.splits["test"]
    y_train, y_test = [r["label"] for r in train], np.array([r["label"] for r in test])
    conflict = np.array([meta(r)["conflict"] for r in test])
    text_train, text_test = bag_of_words(train, test)
    scaler = StandardScaler()
    img_train, img_test = scaler.fit_transform(image_features(train)), scaler.transform(image_features(test))
    inputs = {
        "text": (text_train, text_test),
        "image": (img_train, img_test),
        "all": (hstack([text_train, csr_matrix(img_train)]).tocsr(), hstack([text_test, csr_matrix(img_test)]).tocsr()),
    }
    acc, conflict_acc = {}, {}
    for name, (x_train, x_test) in inputs.items():
        pred = LogisticRegression(max_iter=2000).fit(x_train, y_train).predict(x_test)
        acc[name] = float(np.mean(pred == y_test))
        conflict_acc[name] = float(np.mean(pred[conflict] == y_test[conflict]))
    assert conflict.sum() >= 50
    assert acc["text"] > 0.6 and acc["image"] > 0.6, acc  # chance is 1/3
    assert conflict_acc["all"] > conflict_acc["text"] + 0.2, conflict_acc
    assert conflict_acc["all"] > conflict_acc["image"] + 0.2, conflict_acc
    assert acc["all"] > max(acc["text"], acc["image"]), acc


def test_msa_audio_and_vision_each_predict_the_score():
    from sklearn.linear_model import Ridge

    data = generate("msa", 2000, seed=3)
    train, test = data.splits["train"], data.splits["test"]
    y_train, y_test = np.array([r["score"] for r in train]), np.array([r["score"] for r in test])
    for modality in ("audio", "vision"):
        model = Ridge(alpha=1.0).fit(np.array([summary(r[modality]) for r in train]), y_train)
        pred = model.predict(np.array([summary(r[modality]) for r in test]))
        assert np.corrcoef(pred, y_test)[0, 1] > 0.3, modality


def test_erc_text_and_audio_each_predict_the_emotion():
    from sklearn.linear_model import LogisticRegression

    data = generate("erc", 2000, seed=3)
    train, test = data.splits["train"], data.splits["test"]
    y_train, y_test = [r["label"] for r in train], np.array([r["label"] for r in test])
    majority = max(np.mean(y_test == label) for label in EMOTION_LABELS)
    text_train, text_test = bag_of_words(train, test)
    text_acc = np.mean(LogisticRegression(max_iter=2000).fit(text_train, y_train).predict(text_test) == y_test)
    audio_model = LogisticRegression(max_iter=3000).fit(np.array([summary(r["audio"]) for r in train]), y_train)
    audio_acc = np.mean(audio_model.predict(np.array([summary(r["audio"]) for r in test])) == y_test)
    for acc in (text_acc, audio_acc):
        assert acc > 1 / 7 + 0.25 and acc > majority + 0.15, (text_acc, audio_acc, majority)


def test_text_cues_come_from_the_planted_vocabulary(small):
    polar = {w for words in synthetic.SENTIMENT_ADJECTIVES.values() for w in words}
    polar |= {w for words in synthetic.SENTIMENT_VERBS.values() for w in words}
    for row in all_rows(small["msc"]):
        m = meta(row)
        words = set(row["text"].split())
        if m["text_sentiment"] == "neutral":
            assert not words & polar, row["text"]
        else:
            assert words & set(synthetic.SENTIMENT_ADJECTIVES[m["text_sentiment"]]) | words & set(
                synthetic.SENTIMENT_VERBS[m["text_sentiment"]]
            ), row["text"]
        assert re.search(r"\bPrediction\b", row["gold_chain"])
