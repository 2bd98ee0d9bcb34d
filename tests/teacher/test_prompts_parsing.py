"""Prompts render per task; labels parse by the rule of method.md."""

import pytest

from sentiray import prompts
from sentiray.data import chains
from sentiray.prompts import parsing


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('"Text_analysis": "sad words",\n"Prediction": "negative"', "negative"),
        ('"Prediction": Positive. Overall negative tone elsewhere', "positive"),  # first label after Prediction
        ("I think it is neutral, no wait, positive", "positive"),  # no Prediction: last label word
        ("Prediction: (none) and then the text says negative", "negative"),
        ("the mood is unclear", None),
        ("", None),
        ('"Prediction": "positively"', None),  # whole words only
    ],
)
def test_parse_label(answer, expected):
    assert parsing.parse_label(answer) == expected


def test_parse_label_other_label_sets():
    assert parsing.parse_label('"Prediction": 3 joy', labels=("joy", "anger")) == "joy"


def test_chain_roundtrip():
    fields = {
        "Text_analysis": 'says "great"',
        "Image_analysis": "a sun",
        "Conflict_resolution": "agree",
        "Final_conclusion": "positive mood",
        "Prediction": "positive",
    }
    chain = chains.format_chain(fields)
    parsed = chains.parse_chain(chain)
    assert parsed["Image_analysis"] == "a sun"
    assert parsed["Text_analysis"] == 'says "great"'
    assert list(parsed) == list(fields)
    assert parsing.parse_label(chain) == "positive"


def test_render_variants(tmp_path):
    row = {"task": "masc", "text": "Obama smiles", "aspect": "Obama", "label": "positive"}
    chain = prompts.render("chain", row)
    assert 'aspect "Obama"' in chain and "Text: Obama smiles" in chain
    assert "labelled positive" in prompts.render("rationalize", row)
    post = prompts.render("chain", {"task": "msc", "text": "hi"})
    assert "aspect" not in post
    (tmp_path / "label_msc.txt").write_text("CUSTOM {text}")
    assert prompts.render("label", {"task": "msc", "text": "hi"}, prompts_dir=str(tmp_path)) == "CUSTOM hi"
    assert prompts.messages("p", with_image=True)[0]["content"][0] == {"type": "image"}
    assert prompts.label_target("neutral") == '"Prediction": "neutral"'
