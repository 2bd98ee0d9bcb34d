"""The tiny models: real HF format, loadable with the Auto classes, trainable, generating."""

from __future__ import annotations

import hashlib
import math
import os
import time

import pytest
import torch
from PIL import Image

from sentiray.models import tiny
from sentiray.models.tokenizer import (
    IM_END,
    IMAGE_TOKEN,
    PAD_TOKEN,
    train_tokenizer,
    train_wordpiece_tokenizer,
)

MAX_PARAMS = 1_000_000


def images(n: int) -> list[Image.Image]:
    """Deterministic RGB images of different sizes (the processor resizes and crops)."""
    sizes = [(40, 30), (64, 64), (20, 50)]
    colors = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
    return [Image.new("RGB", sizes[i % 3], colors[i % 3]) for i in range(n)]


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def vlm_batch(processor, prompts: list[str], answers: list[str] | None = None):
    """A batch of chat-formatted prompts (plus answers for training), one image each."""
    texts = []
    for i, prompt in enumerate(prompts):
        messages = user_turn(prompt)
        if answers is not None:
            messages = messages + [{"role": "assistant", "content": answers[i]}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=answers is None))
    return processor(images=images(len(prompts)), text=texts, return_tensors="pt", padding=True)


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_deterministic_and_has_the_special_tokens():
    a, b = train_tokenizer(), train_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert 256 < len(a) <= 2000
    assert a.pad_token == PAD_TOKEN and a.eos_token == IM_END
    assert a.image_token == IMAGE_TOKEN
    # Special tokens stay single tokens, and text round-trips through byte-level BPE.
    text = '<|im_start|>user\n<image>{"Prediction": "positive", "score": -1.5}<|im_end|>'
    ids = a(text).input_ids
    assert ids[:2] == a.convert_tokens_to_ids(["<|im_start|>", "user"])
    assert a.convert_tokens_to_ids(IMAGE_TOKEN) in ids
    assert a.decode(ids) == text
    # The built-in corpus makes the sentiment vocabulary cheap to encode.
    for word in ("positive", "negative", "neutral", "Prediction", "user", "assistant"):
        assert len(a(word).input_ids) == 1, word
    # An extra corpus adds merges for its words.
    extra = train_tokenizer(["zorbly flimflam"] * 50)
    assert len(extra(" zorbly").input_ids) < len(a(" zorbly").input_ids)


def test_chat_template_renders_strings_parts_and_generation_prompt():
    tok = train_tokenizer(padding_side="left")
    assert tok.padding_side == "left"
    messages = [
        {"role": "system", "content": "You judge sentiment."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How is it?"}]},
        {"role": "assistant", "content": "positive"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nYou judge sentiment.<|im_end|>\n"
        "<|im_start|>user\n<image>How is it?<|im_end|>\n"
        "<|im_start|>assistant\npositive<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\n<image>How is it?<|im_end|>\n<|im_start|>assistant\n")


def test_wordpiece_tokenizer_wraps_in_cls_sep():
    tok = train_wordpiece_tokenizer()
    ids = tok("The movie was GREAT!").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "movie", "was", "great", "!", "[SEP]"]


# ----------------------------------------------------------------------------- building


def test_build_is_idempotent_and_deterministic(tiny_models, tmp_path):
    root = os.path.dirname(tiny_models["vlm"])
    weights = os.path.join(tiny_models["vlm"], "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    start = time.perf_counter()
    again = tiny.build_tiny_models(root)
    assert again == tiny_models
    assert time.perf_counter() - start < 1.0  # reused, not rebuilt
    assert os.stat(weights).st_mtime_ns == before

    same = tiny.build_tiny_causal_lm(tmp_path / "same", seed=0)
    other = tiny.build_tiny_causal_lm(tmp_path / "other", seed=1)
    digest = lambda p: file_digest(os.path.join(p, "model.safetensors"))
    assert digest(same) == digest(tiny_models["causal_lm"])
    assert digest(other) != digest(same)
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]

    # A folder holding something else is never overwritten.
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious"):
        tiny.build_tiny_encoder(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- loading with Auto classes


def test_vlm_loads_with_auto_classes(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert sum(p.numel() for p in model.parameters()) < MAX_PARAMS
    # The processor expands one <image> into as many tokens as the vision tower yields.
    batch = vlm_batch(processor, ["How is the movie?"])
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum().item()
    assert n_image_tokens == tiny.NUM_IMAGE_TOKENS == model.config.image_seq_length == 16
    assert tuple(batch["pixel_values"].shape) == (1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)


def test_causal_lm_and_encoder_load_with_auto_classes(tiny_models):
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoProcessor,
        AutoTokenizer,
    )

    lm = AutoModelForCausalLM.from_pretrained(tiny_models["causal_lm"])
    lm_tok = AutoTokenizer.from_pretrained(tiny_models["causal_lm"])
    assert type(lm).__name__ == "Qwen2ForCausalLM"
    assert sum(p.numel() for p in lm.parameters()) < MAX_PARAMS
    # Same vocabulary and same tokenization as the VLM (distillation compares them per token),
    # even though AutoTokenizer gives a Qwen2Tokenizer here and the processor a generic one.
    vlm_tok = AutoProcessor.from_pretrained(tiny_models["vlm"]).tokenizer
    assert lm_tok.get_vocab() == vlm_tok.get_vocab()
    text = 'Text_analysis: "great   movie!!" 2024 -1.5\n\nok'
    assert lm_tok(text).input_ids == vlm_tok(text).input_ids

    enc = AutoModel.from_pretrained(tiny_models["encoder"])
    enc_tok = AutoTokenizer.from_pretrained(tiny_models["encoder"])
    assert type(enc).__name__ == "BertModel"
    assert sum(p.numel() for p in enc.parameters()) < MAX_PARAMS
    batch = enc_tok(["a great movie", "awful"], return_tensors="pt", padding=True)
    hidden = enc(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 64)
    assert torch.isfinite(hidden).all()


# ----------------------------------------------------------------------------- training and generation


def sgd_step_lowers_loss(model, batch, lr: float) -> tuple[float, float]:
    """Loss before and after one SGD step on the same batch."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    optimizer.step()
    with torch.no_grad():
        after = model(**batch).loss.item()
    return loss.item(), after


def test_vlm_loss_backward_and_one_step(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    batch = vlm_batch(processor, ["How is the movie?", "Sad news"], answers=["positive", "negative"])
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[labels == model.config.image_token_id] = -100
    batch["labels"] = labels
    before, after = sgd_step_lowers_loss(model, batch, lr=0.5)
    assert after < before
    # The vision tower is in the graph: it received gradients too.
    assert model.model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_causal_lm_one_step(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["causal_lm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["causal_lm"])
    batch = tok(["The movie was great.", "Awful food."], return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    before, after = sgd_step_lowers_loss(model, batch, lr=0.5)
    assert after < before


def test_vlm_generates_for_a_left_padded_batch(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    batch = vlm_batch(processor, ["How is the movie today, overall?", "Sad"])
    mask = batch["attention_mask"]
    assert mask[1, 0] == 0 and mask[:, -1].all()  # the shorter prompt is padded on the left
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    assert new.shape == (2, 6)
    assert (new != processor.tokenizer.pad_token_id).all()
    assert isinstance(processor.batch_decode(new, skip_special_tokens=True)[0], str)
