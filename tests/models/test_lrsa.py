"""LRSA's network: every ablation switch changes the model as its name says (parameters,
attention maps, what the output depends on); inputs, dropout, saving and LoRA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sentiray.config import LoraConfig
from sentiray.data import synthetic
from sentiray.evaluate import spans
from sentiray.models import lrsa
from sentiray.models.loading import apply_lora
from sentiray.models.tiny import build_tiny_vision


@pytest.fixture(scope="module")
def parts(tiny_models, tmp_path_factory):
    vision_path = build_tiny_vision(str(tmp_path_factory.mktemp("lrsa-vision") / "vision"))
    _, tokenizer = lrsa.load_encoder(tiny_models["encoder"])
    _, processor = lrsa.load_vision(vision_path)
    rows = {}
    for task in ("mabsa", "masc"):
        data = synthetic.generate(task, 40, seed=3)
        rows[task] = [{**r, **synthetic.aspect_rationales(r)} for r in data.splits["train"][:6]]
    return {
        "encoder": tiny_models["encoder"],
        "vision": vision_path,
        "tokenizer": tokenizer,
        "processor": processor,
        "rows": rows,
    }


def build(parts, task="mabsa", **arch_fields):
    torch.manual_seed(0)
    arch = lrsa.LrsaArch(task=task, dropout=0.0, **arch_fields)
    encoder, _ = lrsa.load_encoder(parts["encoder"])
    vision = lrsa.load_vision(parts["vision"])[0] if arch.image == "vision_model" else None
    model = lrsa.LrsaModel(arch, encoder, vision).eval()
    return model, lrsa.LrsaInputs(arch, parts["tokenizer"], image_processor=parts["processor"])


def run(model, inputs, rows):
    batch = inputs.collate([inputs.encode(r) for r in rows])
    with torch.no_grad():
        return model(**batch)


def names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def changed(
    rows, column, text="The image shows a plain grey square; it carries no emotion, so the picture is neutral."
):
    return [{**r, column: text} for r in rows]


# --------------------------------------------------------------------------- the switches


def test_dual_attention_runs_both_directions_and_fuses(parts):
    model, inputs = build(parts, cross_layers=2)
    out = run(model, inputs, parts["rows"]["mabsa"])
    assert {
        "cross.1.attn_mr.q.weight",
        "cross.1.attn_rm.q.weight",
        "summary_proj.weight",
        "fusion_norm.weight",
    } <= names(model)
    assert len(out["attentions"]) == 2  # one pair of maps per layer
    w_mr, w_rm = out["attentions"][0]
    batch = inputs.collate([inputs.encode(r) for r in parts["rows"]["mabsa"]])
    n, l_text = batch["input_ids"].shape
    n_image = 17  # CLIP: 16 patches + CLS
    l_rat = 1 + 2 * batch["rationale_ids"].shape[1]  # null + L_t + L_i
    assert w_mr.shape == (n, n_image + l_text, l_rat) and w_rm.shape == (n, l_rat, n_image + l_text)
    assert torch.allclose(w_mr.sum(-1), torch.ones(n, n_image + l_text), atol=1e-5)  # rows are distributions


def test_one_way_has_no_second_direction_and_no_fusion(parts):
    model, inputs = build(parts, attention="one_way")
    out = run(model, inputs, parts["rows"]["mabsa"])
    assert "cross.0.attn_mr.q.weight" in names(model)
    assert not any("attn_rm" in n or "summary_proj" in n or "fusion_norm" in n for n in names(model))
    assert [w_rm for _, w_rm in out["attentions"]] == [None]


def test_concat_has_no_cross_attention(parts):
    model, inputs = build(parts, attention="concat")
    out = run(model, inputs, parts["rows"]["mabsa"])
    assert out["attentions"] == []
    assert not any(isinstance(m, lrsa.Attention) for m in model.modules())
    assert {"concat_proj.weight", "rationale_type.weight"} <= names(model)
    # the rationales still matter, through the pooled concatenation
    other = run(model, inputs, changed(parts["rows"]["mabsa"], "image_description"))
    assert not torch.allclose(out["logits"], other["logits"])


def test_no_rationales_builds_no_rationale_path(parts):
    model, inputs = build(parts, rationales="none")
    assert not any(n.startswith(("cross", "rationale", "null_rationale", "summary", "concat")) for n in names(model))
    full, _ = build(parts)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    rows = parts["rows"]["mabsa"]
    out = run(model, inputs, rows)
    assert out["attentions"] == []
    assert "rationale_ids" not in inputs.collate([inputs.encode(r) for r in rows])
    both_changed = changed(changed(rows, "image_description"), "text_explanation", "Nothing.")
    assert torch.equal(out["logits"], run(model, inputs, both_changed)["logits"])


@pytest.mark.parametrize(
    "which,read,ignored",
    [("text", "text_explanation", "image_description"), ("image", "image_description", "text_explanation")],
)
def test_one_rationale_reads_only_that_one(parts, which, read, ignored):
    model, inputs = build(parts, rationales=which)
    assert model.rationale_type.num_embeddings == 1
    rows = parts["rows"]["mabsa"]
    base = run(model, inputs, rows)["logits"]
    assert torch.equal(base, run(model, inputs, changed(rows, ignored))["logits"])
    assert not torch.allclose(base, run(model, inputs, changed(rows, read))["logits"])


def test_both_rationales_are_read_and_absent_ones_get_no_attention(parts):
    model, inputs = build(parts)
    rows = parts["rows"]["mabsa"]
    base = run(model, inputs, rows)
    for column in ("text_explanation", "image_description"):
        assert not torch.allclose(base["logits"], run(model, inputs, changed(rows, column))["logits"])
    # a row without its image description: no attention weight lands on that part of R
    missing = [{**rows[0], "image_description": None}]
    batch = inputs.collate([inputs.encode(r) for r in missing])
    with torch.no_grad():
        w_mr, _ = model(**batch)["attentions"][0]
    l_t = batch["rationale_ids"].shape[1]
    assert float(w_mr[0, :, 1 + l_t :].abs().max()) == 0.0 and float(w_mr[0, :, : 1 + l_t].sum()) > 0


def test_gate_fusion_is_a_different_model(parts):
    gate, inputs = build(parts, fusion="gate")
    residual, _ = build(parts)
    assert "gate.weight" in names(gate) and "gate.weight" not in names(residual)
    rows = parts["rows"]["mabsa"]
    assert not torch.allclose(run(gate, inputs, rows)["logits"], run(residual, inputs, rows)["logits"])


def test_rationale_dropout_hides_rationales_in_training_only(parts):
    model, inputs = build(parts, rationale_dropout=1.0)
    rows = parts["rows"]["mabsa"]
    bare = [{**r, "text_explanation": None, "image_description": None} for r in rows]
    model.train()
    model.text_encoder.eval()  # the encoders' own dropout off: only the rationale dropout is random here
    model.vision.eval()
    with_dropout = run(model, inputs, rows)["logits"]
    assert torch.allclose(with_dropout, run(model, inputs, bare)["logits"], atol=1e-6)  # p=1: as if none given
    model.eval()
    assert not torch.allclose(run(model, inputs, rows)["logits"], with_dropout)


# --------------------------------------------------------------------------- inputs and heads


def test_tags_sit_on_first_sub_tokens_and_decode_to_the_gold_spans(parts):
    _, inputs = build(parts)
    for row in parts["rows"]["mabsa"]:
        example = inputs.encode(row, train=True)
        gold = [(s["start"], s["end"], s["polarity"]) for s in row["spans"]]
        tags = [spans.TAGS[example["labels"][t]] for t in example["first_token"]]
        assert spans.from_bio(tags) == gold
        labelled = [i for i, v in enumerate(example["labels"]) if v != lrsa.IGNORE]
        assert labelled == example["first_token"]  # one label per word, on its first token


def test_masc_marks_the_aspect_and_depends_on_it(parts):
    model, inputs = build(parts, task="masc")
    row = parts["rows"]["masc"][0]
    example = inputs.encode(row)
    marked = [t for t, m in zip(example["input_ids"], example["aspect_mask"]) if m]
    assert parts["tokenizer"].decode(marked).replace(" ", "") == row["aspect"].lower().replace(" ", "")
    other = dict(row, aspect="nobody here")  # not in the text: the aspect segment is pooled instead
    assert sum(inputs.encode(other)["aspect_mask"]) > 0
    assert not torch.allclose(run(model, inputs, [row])["logits"], run(model, inputs, [other])["logits"])


def test_rows_that_cannot_train_say_why(parts):
    _, inputs = build(parts, max_length=12)
    long_row = dict(parts["rows"]["mabsa"][0], words=["word"] * 40, spans=[])
    assert "over lrsa.max_length=12" in inputs.encode(long_row, train=True)["skip"]
    assert "skip" not in inputs.encode(long_row)  # prediction cuts instead
    assert "empty text" in inputs.encode(dict(long_row, words=[], text=""))["skip"]
    assert "no aspect" in build(parts, task="masc")[1].encode(dict(parts["rows"]["masc"][0], aspect=""))["skip"]


def test_image_inputs_vision_regions_none(parts):
    model, inputs = build(parts)
    rows = parts["rows"]["mabsa"][:2]
    # a row without an image: its (blank) image tokens are masked out
    no_image = [dict(r, image=None) for r in rows]
    batch = inputs.collate([inputs.encode(r) for r in no_image])
    batch2 = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    with torch.no_grad():
        assert torch.allclose(model(**batch)["logits"], model(**batch2)["logits"], atol=1e-5)
    regions, rinputs = build(parts, image="regions", region_dim=16)
    with_regions = [dict(r, image_regions=torch.randn(5, 16).tolist()) for r in rows]
    out = run(regions, rinputs, with_regions)["logits"]
    other = [dict(r, image_regions=torch.randn(3, 16).tolist()) for r in rows]
    assert not torch.allclose(out, run(regions, rinputs, other)["logits"])
    assert "N x 16" in rinputs.encode(dict(rows[0], image_regions=[[1.0, 2.0]]))["skip"]  # set aside, with why
    plain, pinputs = build(parts, image="none")
    assert plain.vision is None and not hasattr(plain, "image_proj")
    assert (
        run(plain, pinputs, rows)["logits"].shape[:2]
        == inputs.collate([inputs.encode(r) for r in rows])["input_ids"].shape
    )


def test_save_and_load_give_the_same_predictions(parts, tmp_path):
    model, inputs = build(parts, fusion="gate", cross_layers=2)
    rows = parts["rows"]["mabsa"]
    lrsa.save(model, inputs, str(tmp_path / "m"))
    loaded, loaded_inputs = lrsa.load(str(tmp_path / "m"))
    assert dataclasses.asdict(loaded.arch) == dataclasses.asdict(model.arch)
    assert torch.allclose(run(model, inputs, rows)["logits"], run(loaded, loaded_inputs, rows)["logits"], atol=1e-6)


def test_lora_adapts_only_the_encoder_and_saves_merged(parts, tmp_path):
    model, inputs = build(parts)
    model.text_encoder = apply_lora(
        model.text_encoder, LoraConfig(enabled=True, r=4, target_modules=["query", "value"]), language_model_only=False
    )
    model.eval()  # the adapter's dropout too
    trainable = [n for n, p in model.text_encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_" in n for n in (n for n, _ in model.named_parameters()))
    with torch.no_grad():
        for n, p in model.text_encoder.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)  # a trained adapter, so the merge matters
    rows = parts["rows"]["mabsa"]
    expected = run(model, inputs, rows)["logits"]
    lrsa.save(model, inputs, str(tmp_path / "m"))
    loaded, loaded_inputs = lrsa.load(str(tmp_path / "m"))
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    assert torch.allclose(expected, run(loaded, loaded_inputs, rows)["logits"], atol=1e-5)
