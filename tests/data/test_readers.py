"""Readers of the public formats, on small files written here in each exact format."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sentiray.config import DataConfig
from sentiray.data import schema, storage
from sentiray.data.readers import READERS, read_dataset
from sentiray.data.schema import DataError

# --------------------------------------------------------------------------- helpers


def write_image(path: Path, color=(200, 30, 30)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, "PNG" if path.suffix == ".png" else "JPEG")
    return path.read_bytes()


def write_broken_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")


def reasons(data: schema.PreparedDataset) -> dict[str | None, str]:
    """Reject id -> reason code."""
    return {r.id: r.reason.split(":")[0] for r in data.rejects}


def counts(data: schema.PreparedDataset) -> dict[str, int]:
    return {split: len(rows) for split, rows in data.splits.items()}


def by_id(data: schema.PreparedDataset, split: str) -> dict[str, dict]:
    return {r["id"]: r for r in data.splits[split]}


def test_registry_names_every_public_format():
    assert set(READERS) == {
        "twitter2015", "twitter2017", "mabsa_json", "mvsa_single", "mvsa_multiple",
        "mosi", "mosei", "sims", "simsv2", "meld",
    }  # fmt: skip


def test_unknown_format_and_wrong_task_are_refused(tmp_path):
    with pytest.raises(DataError, match="known formats: .*twitter2015"):
        read_dataset(DataConfig.model_construct(format="nope", input=str(tmp_path), task=None))
    with pytest.raises(DataError, match="holds task 'msa'"):
        read_dataset(DataConfig(format="mosi", input=str(tmp_path), task="msc"))


# --------------------------------------------------------------------------- Twitter-2015/2017

TSV_HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n"


def make_twitter(root: Path, name: str = "twitter2015", images_dir: str | None = None) -> dict[str, bytes]:
    """A TomBERT-layout folder ``root/name`` with ``root/name_images`` beside it
    (or ``images_dir`` inside it). Returns the bytes of the good images."""
    folder = root / name
    folder.mkdir(parents=True)
    img_dir = folder / images_dir if images_dir else root / f"{name}_images"
    good = {
        n: write_image(img_dir / n, c)
        for n, c in (("1.jpg", (255, 0, 0)), ("2.jpg", (0, 255, 0)), ("3.jpg", (0, 0, 255)))
    }
    write_broken_image(img_dir / "broken.jpg")
    train = [
        "0\t2\t1.jpg\tRT @ ltsChuckBass : $T$ is everything # MCM\tChuck Bass",
        "1\t0\t1.jpg\tRT @ ltsChuckBass : Chuck Bass is everything in $T$\tNYC",  # same tweet, 2nd aspect
        "2\t5\t2.jpg\t$T$ is fine\tA",  # bad label
        "3\t1\t2.jpg\t$T$ only four columns",  # bad columns
        "4\t1\tmissing.jpg\t$T$ has no picture\tB",  # missing image
        "5\t1\tbroken.jpg\t$T$ has a broken picture\tC",  # unreadable image
        "6\t1\t2.jpg\t\tD",  # empty tweet
    ]
    dev = ["0\t1\t2.jpg\t$T$ played tonight\tThe Band", "1\t2\t3.jpg\tLove $T$ !\tParis"]
    test = ["0\t0\t3.jpg\tSad day for $T$\tJohn", "1\t1\t2.jpg\tno marker in this tweet\tBoston"]
    for split, lines in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"{split}.tsv").write_text(TSV_HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return good


def check_twitter(data: schema.PreparedDataset, source: str, images: dict[str, bytes] | None) -> None:
    """``images``: the expected bytes, or None in uri mode (which checks existence only,
    so the broken image is referenced instead of rejected)."""
    assert data.task == "masc" and data.source == source
    assert counts(data) == {"train": 2 if images else 3, "dev": 2, "test": 2}
    train = by_id(data, "train")
    first = train[f"{source}-train-0"]
    assert first["text"] == "RT @ ltsChuckBass : Chuck Bass is everything # MCM"
    assert first["aspect"] == "Chuck Bass" and first["label"] == "positive" and first["task"] == "masc"
    assert json.loads(first["meta"])["masked_text"] == "RT @ ltsChuckBass : $T$ is everything # MCM"
    second = train[f"{source}-train-1"]
    assert second["aspect"] == "NYC" and second["label"] == "negative"
    assert second["text"] == "RT @ ltsChuckBass : Chuck Bass is everything in NYC"
    assert [r["label"] for r in data.splits["dev"]] == ["neutral", "positive"]
    assert [r["label"] for r in data.splits["test"]] == ["negative", "neutral"]
    expected = {
        f"{source}-train-2": "bad_label",
        f"{source}-train-3": "bad_columns",
        f"{source}-train-4": "missing_image",
        f"{source}-train-6": "empty_text",
    }
    if images:
        expected[f"{source}-train-5"] = "bad_image"
    assert reasons(data) == expected
    assert data.notes["no_target_marker"] == 1
    if images:
        assert first["image"] == images["1.jpg"] and first["image_uri"] is None
        assert data.splits["dev"][1]["image"] == images["3.jpg"]


def test_twitter_tombert_layout_bytes(tmp_path):
    images = make_twitter(tmp_path, "twitter2015")
    data = read_dataset(DataConfig(format="twitter2015", input=str(tmp_path / "twitter2015")))
    check_twitter(data, "twitter2015", images)


def test_twitter_images_folder_inside_and_uri_mode(tmp_path):
    make_twitter(tmp_path, "twitter2017", images_dir="images")
    data = read_dataset(DataConfig(format="twitter2017", input=str(tmp_path / "twitter2017"), image_mode="uri"))
    check_twitter(data, "twitter2017", images=None)
    row = data.splits["dev"][0]
    assert row["image"] is None
    assert row["image_uri"] == str(tmp_path / "twitter2017" / "images" / "2.jpg") and os.path.exists(row["image_uri"])


def test_twitter_missing_split_file_is_an_error(tmp_path):
    make_twitter(tmp_path, "twitter2015")
    (tmp_path / "twitter2015" / "dev.tsv").unlink()
    with pytest.raises(DataError, match="missing dev.tsv"):
        read_dataset(DataConfig(format="twitter2015", input=str(tmp_path / "twitter2015")))


def test_twitter_from_s3(tmp_path, s3_uri):
    local = tmp_path / "release"
    images = make_twitter(local, "twitter2015")
    storage.upload_dir(str(local), s3_uri)
    source = f"{s3_uri}/twitter2015"
    check_twitter(read_dataset(DataConfig(format="twitter2015", input=source)), "twitter2015", images)
    data = read_dataset(DataConfig(format="twitter2015", input=source, image_mode="uri"))
    assert data.splits["dev"][0]["image_uri"] == f"{s3_uri}/twitter2015_images/2.jpg"
    assert storage.read_bytes(data.splits["dev"][0]["image_uri"]) == images["2.jpg"]


# --------------------------------------------------------------------------- VLP-MABSA JSON


def test_mabsa_json(tmp_path):
    folder = tmp_path / "twitter2015"
    folder.mkdir()
    img = write_image(folder / "images" / "10.jpg")
    write_image(folder / "images" / "11.jpg")
    words = ["RT", "@", "Chuck", "Bass", "loves", "NYC", "!"]

    def item(aspects, image_id="10.jpg", w=words):
        return {"words": w, "image_id": image_id, "aspects": aspects}

    good = item(
        [
            {"from": 2, "to": 4, "polarity": "POS", "term": ["Chuck", "Bass"]},
            {"from": 5, "to": 6, "polarity": "NEU", "term": ["NYC"]},
        ]
    )
    train = [
        good,
        item([{"from": 5, "to": 9, "polarity": "NEG", "term": ["NYC"]}]),  # out of range
        item([{"from": 2, "to": 3, "polarity": "POS", "term": ["Bass"]}]),  # term != words
        item([{"from": 2, "to": 3, "polarity": "GOOD", "term": ["Chuck"]}]),  # unknown polarity
        item([{"from": 0, "to": 1, "polarity": "NEG", "term": ["RT"]}], image_id="404.jpg"),
        item([], w=[]),  # no words
    ]
    dev = [item([{"from": 0, "to": 1, "polarity": "NEG", "term": ["Sad"]}], "11.jpg", ["Sad", "day"])]
    test = [item([{"from": 1, "to": 2, "polarity": "NEU", "term": ["Paris"]}], "11.jpg", ["in", "Paris"])]
    for split, items in (("train", train), ("dev", dev), ("test", test)):
        (folder / f"{split}.json").write_text(json.dumps(items))

    data = read_dataset(DataConfig(format="mabsa_json", input=str(folder)))
    assert data.task == "mabsa" and counts(data) == {"train": 1, "dev": 1, "test": 1}
    row = data.splits["train"][0]
    assert row["id"] == "mabsa_json-train-0"
    assert row["text"] == "RT @ Chuck Bass loves NYC !" and row["words"] == words
    assert row["spans"] == [
        {"start": 2, "end": 4, "polarity": "positive"},
        {"start": 5, "end": 6, "polarity": "neutral"},
    ]
    assert row["label"] is None and row["image"] == img
    assert data.splits["dev"][0]["spans"] == [{"start": 0, "end": 1, "polarity": "negative"}]
    assert reasons(data) == {
        "mabsa_json-train-1": "bad_span",
        "mabsa_json-train-2": "term_mismatch",
        "mabsa_json-train-3": "bad_polarity",
        "mabsa_json-train-4": "missing_image",
        "mabsa_json-train-5": "empty_text",
    }
    assert data.notes["spans"] == 4


# --------------------------------------------------------------------------- MVSA


def make_mvsa(
    folder: Path, labels: list[tuple[str, str]], texts: dict[str, bytes], images: set[str], header: str
) -> None:
    (folder / "data").mkdir(parents=True)
    (folder / "labelResultAll.txt").write_text(header + "\n" + "\n".join(f"{i}\t{lab}" for i, lab in labels) + "\n")
    for post_id, raw in texts.items():
        (folder / "data" / f"{post_id}.txt").write_bytes(raw)
    for post_id in images:
        write_image(folder / "data" / f"{post_id}.jpg")


def test_mvsa_single_cleaning_and_split(tmp_path):
    labels = [
        ("1", "positive,positive"),
        ("2", "neutral,negative"),  # neutral + polar -> negative
        ("3", "positive,negative"),  # conflict
        ("4", "negative,negative"),  # no text file
        ("5", "neutral,neutral"),  # no image
        ("6", "positive,neutral"),  # cp1252 text
        ("7", "happy,positive"),  # unknown label word
        ("8", "neutral,neutral"),  # empty text
    ] + [(str(i), "negative,negative") for i in range(10, 20)]
    texts = {pid: f"post {pid} #tag http://t.co/x".encode() for pid, _ in labels if pid not in ("4", "6", "8")}
    texts["6"] = "caf\xe9 \u201cgreat\u201d".encode("cp1252")
    texts["8"] = b"  \n"
    make_mvsa(tmp_path / "MVSA_Single", labels, texts, {pid for pid, _ in labels if pid != "5"}, "ID\ttext,image")
    cfg = DataConfig(format="mvsa_single", input=str(tmp_path / "MVSA_Single"), seed=3)
    data = read_dataset(cfg)

    assert data.task == "msc"
    kept = {r["id"]: r for rows in data.splits.values() for r in rows}
    assert len(kept) == 13  # 1, 2, 6 and 10..19
    assert counts(data) == {"train": 11, "dev": 1, "test": 1}
    assert kept["mvsa_single-1"]["label"] == "positive"
    assert kept["mvsa_single-2"]["label"] == "negative"
    assert kept["mvsa_single-6"]["label"] == "positive" and kept["mvsa_single-6"]["text"] == "caf\xe9 \u201cgreat\u201d"
    assert kept["mvsa_single-1"]["image"][:2] == b"\xff\xd8"  # JPEG bytes
    assert reasons(data) == {
        "mvsa_single-3": "conflict_pos_neg",
        "mvsa_single-4": "missing_text",
        "mvsa_single-5": "missing_image",
        "mvsa_single-7": "bad_label",
        "mvsa_single-8": "empty_text",
    }
    assert data.notes["dropped"] == {
        "bad_label": 1,
        "conflict_pos_neg": 1,
        "empty_text": 1,
        "missing_image": 1,
        "missing_text": 1,
    }
    assert data.notes["posts"] == 18 and data.notes["kept"] == 13 and data.notes["text_fallback_decoding"] == 1
    assert data.notes["label_rule"] == {"agree": 11, "neutral_plus_polar": 2}  # of the kept posts
    # The split is deterministic for a seed.
    again = read_dataset(cfg)
    assert [[r["id"] for r in again.splits[s]] for s in schema.SPLITS] == [
        [r["id"] for r in data.splits[s]] for s in schema.SPLITS
    ]


def test_mvsa_multiple_majority(tmp_path):
    labels = [
        ("1", "positive,positive\tpositive,neutral\tnegative,positive"),  # positive / positive
        ("2", "positive,neutral\tnegative,neutral\tneutral,neutral"),  # text: no majority
        ("3", "negative,positive\tnegative,positive\tnegative,neutral"),  # negative vs positive
        ("4", "neutral,negative\tneutral,negative\tpositive,negative"),  # neutral + negative
        ("5", "positive,positive\tpositive,positive"),  # two annotators only
    ]
    texts = {pid: b"a post" for pid, _ in labels}
    make_mvsa(tmp_path / "MVSA", labels, texts, {pid for pid, _ in labels}, "ID\ttext,image\ttext,image\ttext,image")
    data = read_dataset(DataConfig(format="mvsa_multiple", input=str(tmp_path / "MVSA"), split_ratios=(1.0, 0.0, 0.0)))
    assert counts(data) == {"train": 2, "dev": 0, "test": 0}
    kept = by_id(data, "train")
    assert kept["mvsa_multiple-1"]["label"] == "positive" and kept["mvsa_multiple-4"]["label"] == "negative"
    assert json.loads(kept["mvsa_multiple-4"]["meta"])["text_label"] == "neutral"
    assert reasons(data) == {
        "mvsa_multiple-2": "no_majority",
        "mvsa_multiple-3": "conflict_pos_neg",
        "mvsa_multiple-5": "bad_columns",
    }
    assert data.notes["dropped"] == {"bad_columns": 1, "conflict_pos_neg": 1, "no_majority": 1}


# --------------------------------------------------------------------------- MMSA pickles


def mmsa_split(
    n: int, t_a: int = 6, d_a: int = 3, t_v: int = 4, d_v: int = 5, seed: int = 0, prefix: str = "vid"
) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "id": np.array([f"{prefix}$_${i}" for i in range(n)], dtype=object),
        "raw_text": np.array([f"clip {i} text" for i in range(n)], dtype=object),
        "text": rng.normal(size=(n, 8, 16)).astype(np.float32),
        "text_bert": np.zeros((n, 3, 8), dtype=np.int64),
        "audio": rng.normal(size=(n, t_a, d_a)).astype(np.float32),
        "vision": rng.normal(size=(n, t_v, d_v)).astype(np.float32),
        "audio_lengths": [t_a - (i % 3) for i in range(n)],
        "vision_lengths": [t_v - (i % 2) for i in range(n)],
        "regression_labels": np.array([(-1.0) ** i * 0.6 * i for i in range(n)], dtype=np.float32),
        "classification_labels": np.array([i % 3 for i in range(n)], dtype=np.float32),
        "annotations": np.array(["Positive"] * n, dtype=object),
    }


def make_mmsa(path: Path) -> dict:
    train, valid, test = mmsa_split(5, seed=1), mmsa_split(2, seed=2, prefix="dev"), mmsa_split(3, seed=3, prefix="tst")
    train["audio"][0, 1, 2] = -np.inf  # MMSA audio has -inf in places
    train["audio"][1, 0, :] = np.nan
    train["audio"][2, 5, 0] = -np.inf  # beyond row 2's length (4 of 6 frames): cut off, not counted
    train["regression_labels"][3] = np.nan  # -> bad_label
    train["audio_lengths"][4] = 9  # more frames than stored -> length_mismatch
    test["raw_text"] = test["raw_text"][:2]  # one row short -> length_mismatch
    blob = {"train": train, "valid": valid, "test": test}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(blob, f, protocol=4)
    return blob


def test_mmsa_pickle(tmp_path):
    blob = make_mmsa(tmp_path / "MOSI" / "unaligned_50.pkl")
    data = read_dataset(DataConfig(format="mosi", input=str(tmp_path / "MOSI")))  # the folder
    assert data.task == "msa" and data.source == "mosi"
    assert counts(data) == {"train": 3, "dev": 2, "test": 2}
    train = by_id(data, "train")
    row0, row2 = train["mosi-train-vid$_$0"], train["mosi-train-vid$_$2"]
    assert row0["text"] == "clip 0 text" and row0["score"] == 0.0 and row0["label"] == "neutral"
    assert row2["label"] == "positive" and row2["score"] == pytest.approx(1.2)
    assert train["mosi-train-vid$_$1"]["label"] == "negative"
    # the first `length` frames, D kept
    assert np.array(row0["audio"]).shape == (6, 3) and np.array(row0["vision"]).shape == (4, 5)
    assert np.array(train["mosi-train-vid$_$1"]["audio"]).shape == (5, 3)
    assert np.array(row2["audio"]).shape == (4, 3) and np.array(row2["vision"]).shape == (4, 5)
    assert row0["audio"][1][2] == 0.0
    assert row0["audio"].dtype == np.float32 and row0["audio"].flags.c_contiguous  # float32 arrays, not lists
    assert row2["audio"][0].tolist() == blob["train"]["audio"][2, 0].tolist()  # float32 values unchanged
    assert train["mosi-train-vid$_$1"]["audio"][0].tolist() == [0.0, 0.0, 0.0]
    assert data.notes["nonfinite_replaced"] == {"audio": 4, "vision": 0}  # 1 in row 0, 3 in row 1
    assert json.loads(row0["meta"])["clip_id"] == "vid$_$0"
    assert [r["id"] for r in data.splits["dev"]] == ["mosi-dev-dev$_$0", "mosi-dev-dev$_$1"]
    assert reasons(data) == {
        "mosi-train-vid$_$3": "bad_label",
        "mosi-train-vid$_$4": "length_mismatch",
        "mosi-test-tst$_$2": "length_mismatch",
    }


def test_mmsa_sims_file_input_without_lengths(tmp_path):
    part = mmsa_split(2, t_a=3, d_a=33, t_v=2, d_v=7)
    for key in ("audio_lengths", "vision_lengths"):
        del part[key]
    part["regression_labels_T"] = np.array([0.2, -0.4], dtype=np.float32)
    path = tmp_path / "sims.pkl"
    with open(path, "wb") as f:
        pickle.dump({"train": part, "valid": part, "test": part}, f)
    data = read_dataset(DataConfig(format="sims", input=str(path)))
    row = data.splits["test"][1]
    assert np.array(row["audio"]).shape == (3, 33) and np.array(row["vision"]).shape == (2, 7)
    assert json.loads(row["meta"])["score_text"] == pytest.approx(-0.4)
    assert data.notes["no_lengths"] == ["audio", "vision"]


def test_mmsa_folder_must_hold_one_pickle(tmp_path):
    for name in ("a.pkl", "b.pkl"):
        (tmp_path / name).write_bytes(pickle.dumps({}))
    with pytest.raises(DataError, match="exactly one .pkl"):
        read_dataset(DataConfig(format="mosei", input=str(tmp_path)))


def test_reader_output_round_trips_through_parquet(tmp_path):
    make_mmsa(tmp_path / "in" / "data.pkl")
    data = read_dataset(DataConfig(format="mosi", input=str(tmp_path / "in")))
    out = str(tmp_path / "out")
    manifest = schema.write_dataset(data, out)
    assert manifest["counts"] == {"train": 3, "dev": 2, "test": 2}
    assert manifest["reject_reasons"] == {"bad_label": 1, "length_mismatch": 2}
    for split in schema.SPLITS:
        back = {r["id"]: r for r in schema.read_rows(out, split)}
        for row in data.splits[split]:
            got = back[row["id"]]
            assert np.array(got["audio"]).shape == np.array(row["audio"]).shape
            assert np.array(got["vision"]).shape == np.array(row["vision"]).shape
            assert got["audio"].dtype == np.float32 and np.array_equal(got["audio"], row["audio"])
            assert got["score"] == pytest.approx(row["score"])
    assert len(schema.read_rows(out, "rejects")) == 3


# --------------------------------------------------------------------------- MELD

MELD_COLUMNS = [
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
]


def write_meld_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MELD_COLUMNS)
        for i, (utt, speaker, emotion, sentiment, dia, utt_id) in enumerate(rows, start=1):
            writer.writerow([i, utt, speaker, emotion, sentiment, dia, utt_id, 8, 21, "00:16:16,059", "00:16:21,731"])


def make_meld(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_meld_csv(
        folder / "train_sent_emo.csv",
        [
            ["I\x92m fine, thanks.", "Chandler", "joy", "positive", 0, 0],
            ["Oh my God, he\u00e2\u0080\u0099s lost it.", "Monica", "Surprise", "negative", 0, 1],
            ['Well, "maybe",\nyes.', "Ross", "neutral", "neutral", 1, 0],
            ["What?", "Joey", "happiness", "positive", 1, 1],  # not a MELD emotion
            ["   ", "Joey", "neutral", "neutral", 1, 2],  # empty utterance
            ["Again.", "Joey", "neutral", "neutral", 1, 0],  # same dialogue/utterance twice
        ],
    )
    write_meld_csv(folder / "dev_sent_emo.csv", [["No.", "Rachel", "anger", "negative", 0, 0]])
    write_meld_csv(
        folder / "test_sent_emo.csv", [["Why not\u00e2\u20ac\u2122?", "Phoebe", "sadness", "negative", 5, 3]]
    )


def test_meld_csv_and_text_repair(tmp_path):
    make_meld(tmp_path / "MELD")
    data = read_dataset(DataConfig(format="meld", input=str(tmp_path / "MELD")))
    assert data.task == "erc" and counts(data) == {"train": 3, "dev": 1, "test": 1}
    train = by_id(data, "train")
    assert train["meld-train-dia0_utt0"]["text"] == "I\u2019m fine, thanks."
    assert train["meld-train-dia0_utt1"]["text"] == "Oh my God, he\u2019s lost it."
    assert train["meld-train-dia0_utt1"]["label"] == "surprise"
    assert train["meld-train-dia1_utt0"]["text"] == 'Well, "maybe",\nyes.'
    assert data.splits["test"][0]["text"] == "Why not\u2019?" and data.splits["test"][0]["id"] == "meld-test-dia5_utt3"
    meta = json.loads(train["meld-train-dia0_utt1"]["meta"])
    assert meta["sentiment"] == "negative" and meta["speaker"] == "Monica"
    assert meta["dialogue_id"] == 0 and meta["utterance_id"] == 1 and meta["clip"] == "dia0_utt1.mp4"
    assert data.notes["text_repaired"] == 3
    assert reasons(data) == {
        "meld-train-dia1_utt1": "bad_label",
        "meld-train-dia1_utt2": "empty_text",
        "meld-train-dia1_utt0": "duplicate_id",
    }
    assert train["meld-train-dia1_utt0"]["text"].startswith("Well")  # the first of the two kept
    assert all(r["audio"] is None for rows in data.splits.values() for r in rows)


def test_meld_features_pickle(tmp_path):
    make_meld(tmp_path / "MELD")
    vision = np.ones((2, 5), dtype=np.float32)
    vision[1, 3] = np.nan
    nested = {
        "train": {
            "dia0_utt0": {"audio": np.zeros((3, 4), dtype=np.float32), "vision": np.ones((2, 5), dtype=np.float32)},
            "dia0_utt1": {"audio": np.arange(4, dtype=np.float32), "video": vision},  # 1-D audio: one frame
            "dia1_utt0": {"audio": np.zeros((6, 4), dtype=np.float32), "audio_length": 2},
        },
        "valid": {"dia0_utt0": {"audio": np.zeros((1, 4)), "vision": np.zeros((1, 5))}},
        "test": {"dia9_utt9": {"audio": np.zeros((1, 4))}},  # no such utterance
    }
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps(nested))
    data = read_dataset(DataConfig(format="meld", input=str(tmp_path / "MELD"), features=str(path)))
    train = by_id(data, "train")
    assert np.array(train["meld-train-dia0_utt0"]["audio"]).shape == (3, 4)
    assert np.array(train["meld-train-dia0_utt0"]["vision"]).shape == (2, 5)
    assert train["meld-train-dia0_utt1"]["audio"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert train["meld-train-dia0_utt1"]["vision"][1].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert (
        np.array(train["meld-train-dia1_utt0"]["audio"]).shape == (2, 4)
        and train["meld-train-dia1_utt0"]["vision"] is None
    )
    assert np.array(data.splits["dev"][0]["vision"]).shape == (1, 5)
    assert data.splits["test"][0]["audio"] is None
    assert data.notes["missing_features"] == 1 and data.notes["unused_features"] == 1
    assert data.notes["nonfinite_replaced"] == {"audio": 0, "vision": 1}

    # The same features keyed by row id, without the split level.
    flat = {f"meld-{'dev' if s == 'valid' else s}-{k}": v for s, per in nested.items() for k, v in per.items()}
    path.write_bytes(pickle.dumps(flat))
    again = read_dataset(DataConfig(format="meld", input=str(tmp_path / "MELD"), features=str(path)))
    assert by_id(again, "train")["meld-train-dia0_utt1"]["audio"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    assert again.notes["missing_features"] == 1
