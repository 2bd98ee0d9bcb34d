"""The JMASA / MATE / MASC metrics against values computed by hand with VLP-MABSA's
arithmetic (NUSTM/VLP-MABSA ``src/model/metrics.py``), and BIO tags <-> spans."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from sentiray.data.schema import DataError
from sentiray.evaluate import score, spans

# Five posts covering the reference's edge cases (worked through in the test below).
POSTS = [
    # a duplicated prediction, a wrong polarity, a spurious span
    {"gold": [[0, 2, "POS"], [5, 6, "NEG"]], "pred": [[0, 2, "POS"], [0, 2, "POS"], [5, 6, "POS"], [3, 4, "NEU"]]},
    # a duplicated gold span; a span predicted twice: the last polarity counts
    {"gold": [[1, 3, "neutral"], [1, 3, "neutral"]], "pred": [[1, 3, "negative"], [1, 3, "neutral"]]},
    # a post without aspects, one spurious prediction
    {"gold": [], "pred": [[2, 4, "positive"]]},
    # a missed aspect
    {"gold": [[0, 1, "NEG"]], "pred": []},
    # a malformed prediction (start > end) and one with no polarity: both dropped, post invalid
    {"gold": [[2, 3, "POS"]], "pred": [[3, 2, "POS"], [2, 3, None]]},
]


def test_vlp_mabsa_arithmetic_by_hand():
    got = score.score("mabsa", POSTS)
    # JMASA triples: post 1 tp 1 (0,2,POS), fp 2 (5,6,POS) (3,4,NEU), fn 1 (5,6,NEG); post 2 tp 1;
    # post 3 fp 1; post 4 fn 1; post 5 fn 1  ->  tp 2, fp 3, fn 3
    assert got["jmasa_p"] == pytest.approx(2 / 5, abs=1e-12)
    assert got["jmasa_r"] == pytest.approx(2 / 5, abs=1e-12)
    assert got["jmasa_f1"] == pytest.approx(0.4, abs=1e-12)
    # MATE spans: post 1 tp 2 fp 1; post 2 tp 1; post 3 fp 1; posts 4, 5 fn 1 each -> tp 3, fp 2, fn 2
    assert got["mate_p"] == pytest.approx(3 / 5, abs=1e-12)
    assert got["mate_r"] == pytest.approx(3 / 5, abs=1e-12)
    assert got["mate_f1"] == pytest.approx(0.6, abs=1e-12)
    # MASC over the 3 predicted spans that are gold: (0,2) right POS, (5,6) POS for NEG, (1,3) right NEU
    assert got["masc_n"] == 3
    assert got["masc_acc"] == pytest.approx(2 / 3, abs=1e-12)
    # per polarity (P, R): POS (1/2, 1), NEG (0, 0), NEU (1, 1) -> macro P 1/2, macro R 2/3;
    # F1 of those two = 4/7 (the mean of per-class F1s would be 5/9: the reference does not do that)
    assert got["masc_p"] == pytest.approx(0.5, abs=1e-12)
    assert got["masc_r"] == pytest.approx(2 / 3, abs=1e-12)
    assert got["masc_f1"] == pytest.approx(4 / 7, abs=1e-12)
    assert got["invalid"] == pytest.approx(1 / 5)
    # what the reference prints: round(100 * value, 2)
    printed = {k: round(100 * got[k], 2) for k in ("jmasa_f1", "mate_f1", "masc_acc", "masc_f1")}
    assert printed == {"jmasa_f1": 40.0, "mate_f1": 60.0, "masc_acc": 66.67, "masc_f1": 57.14}


def test_conflict_gold_spans_and_empty_denominators():
    # a prediction on a gold conflict span is dropped; the conflict span is no target either
    got = spans.span_scores([{"gold": [[0, 1, "CON"], [2, 3, "POS"]], "pred": [[0, 1, "POS"], [2, 3, "POS"]]}])
    assert got["jmasa_p"] == pytest.approx(1.0) and got["jmasa_r"] == pytest.approx(1.0)
    assert got["mate_p"] == pytest.approx(1.0)
    # the reference's smoothing: a perfect score is just under 1, an empty one is exactly 0
    assert got["jmasa_f1"] < 1.0 and round(100 * got["jmasa_f1"], 2) == 100.0
    nothing = spans.span_scores([{"gold": [], "pred": []}])
    assert all(nothing[k] == 0.0 for k in ("jmasa_p", "jmasa_r", "jmasa_f1", "mate_f1", "masc_acc", "masc_f1"))
    # only wrong polarities on the right spans: JMASA 0, MATE perfect, MASC accuracy 0
    wrong = spans.span_scores([{"gold": [[0, 1, "POS"]], "pred": [[0, 1, "NEG"]]}])
    assert wrong["jmasa_f1"] == 0.0 and wrong["mate_f1"] == pytest.approx(1.0) and wrong["masc_acc"] == 0.0


def test_masc_rows_report_sklearn_and_vlp_numbers():
    lines = [
        {"pred": p, "label": g}
        for p, g in [
            ("positive", "positive"),
            ("negative", "positive"),
            ("neutral", "neutral"),
            ("neutral", "negative"),
        ]
    ]
    got = score.score("masc", lines)
    assert got["accuracy"] == pytest.approx(0.5) and got["masc_acc"] == pytest.approx(0.5)
    # per class (P, R): positive (1, 1/2), negative (0, 0), neutral (1/2, 1) -> macro P 1/2, R 1/2
    assert got["masc_f1"] == pytest.approx(0.5, abs=1e-9)
    # sklearn's macro-F1 is the mean of per-class F1s: (2/3 + 0 + 2/3) / 3
    assert got["macro_f1"] == pytest.approx(4 / 9)


def test_bad_lines_name_the_problem():
    with pytest.raises(DataError, match="unknown polarity 'great'"):
        spans.span_scores([{"gold": [], "pred": [[0, 1, "great"]]}])
    with pytest.raises(DataError, match="line 1 gold"):
        spans.span_scores([{"gold": [[2, 2, "POS"]], "pred": []}])


def test_score_command_prints_the_eight_numbers(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in POSTS))
    out = subprocess.run(
        [sys.executable, "-m", "sentiray.cli", "score", "--task", "mabsa", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = json.loads(out.strip().splitlines()[-1])
    for key in ("jmasa_p", "jmasa_r", "jmasa_f1", "mate_p", "mate_r", "mate_f1", "masc_acc", "masc_f1"):
        assert key in values
    assert values["jmasa_f1"] == pytest.approx(0.4) and values["masc_f1"] == pytest.approx(4 / 7)


# --------------------------------------------------------------------------- BIO


def test_bio_round_trips_gold_spans():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(0, 12)
        words, found = 0, []
        while words < n:  # random non-overlapping spans, adjacent ones included
            width = rng.randint(1, 3)
            if words + width <= n and rng.random() < 0.5:
                found.append((words, words + width, rng.choice(spans.POLARITIES)))
            words += width
        tags = spans.to_bio(found, n)
        assert len(tags) == n and set(tags) <= set(spans.TAGS)
        assert spans.from_bio(tags) == found


def test_bio_decoding_follows_conlleval():
    assert spans.from_bio(["I-POS", "I-POS", "O"]) == [(0, 2, "positive")]  # I- after O starts a span
    assert spans.from_bio(["B-POS", "I-NEG"]) == [(0, 1, "positive"), (1, 2, "negative")]
    assert spans.from_bio(["B-NEU", "B-NEU", "I-NEU"]) == [(0, 1, "neutral"), (1, 3, "neutral")]
    with pytest.raises(DataError, match="overlaps"):
        spans.to_bio([(0, 2, "positive"), (1, 3, "negative")], 4)
