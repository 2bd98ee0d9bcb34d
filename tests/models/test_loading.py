"""Loading from folders and s3://, LoRA, saving merged and adapter-only checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from PIL import Image

from sentiray.config import LoraConfig, ModelConfig
from sentiray.data import storage
from sentiray.models.loading import (
    FAMILIES,
    ModelNotFoundError,
    apply_lora,
    count_parameters,
    load_model,
    load_model_from_config,
    resolve_model_path,
    save_model,
)

LORA = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)


def vlm_batch(processor, prompts: list[str], answers: list[str] | None = None):
    """Chat-formatted prompts (plus answers), one solid-colour image each."""
    colors = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
    texts = []
    for i, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        if answers is not None:
            messages.append({"role": "assistant", "content": answers[i]})
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=answers is None))
    pictures = [Image.new("RGB", (40 + 8 * i, 30), colors[i % 3]) for i in range(len(prompts))]
    return processor(images=pictures, text=texts, return_tensors="pt", padding=True)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def train_lora_step(model, batch) -> None:
    """One optimizer step, so that the adapter is no longer the identity (B starts at 0)."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


# ----------------------------------------------------------------------------- paths


def test_missing_path_gives_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*config\.json"):
        resolve_model_path(str(tmp_path / "empty"))
    assert issubclass(ModelNotFoundError, ValueError)


def test_missing_s3_prefix_gives_a_clear_error(s3_uri):
    with pytest.raises(ModelNotFoundError, match=s3_uri):
        resolve_model_path(s3_uri)


def test_local_paths_resolve_as_they_are(tiny_models):
    assert resolve_model_path(tiny_models["vlm"]) == tiny_models["vlm"]
    assert resolve_model_path("file://" + tiny_models["vlm"]) == tiny_models["vlm"]


# ----------------------------------------------------------------------------- load_model


@pytest.mark.parametrize(
    "kind, model_class, processor_class",
    [
        ("vlm", "LlavaForConditionalGeneration", "LlavaProcessor"),
        ("causal_lm", "Qwen2ForCausalLM", "Qwen2Tokenizer"),
        ("encoder", "BertModel", "TokenizersBackend"),
    ],
)
def test_load_model_per_kind(tiny_models, kind, model_class, processor_class):
    model, processor = load_model(tiny_models[kind], kind=kind)
    assert type(model).__name__ == model_class
    assert type(processor).__name__ == processor_class
    trainable, total = count_parameters(model)
    assert trainable == total < 1_000_000
    assert next(model.parameters()).dtype == torch.float32


def test_dtype_generation_and_config(tiny_models):
    model, processor = load_model(tiny_models["vlm"], dtype="bfloat16", for_generation=True)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.pad_token is not None
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id

    model, tokenizer = load_model_from_config(ModelConfig(path=tiny_models["causal_lm"], kind="causal_lm"))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tokenizer.padding_side == "right"  # training default

    with pytest.raises(ValueError, match="unknown model kind"):
        load_model(tiny_models["vlm"], kind="seq2seq")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(tiny_models["vlm"], dtype="int8")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_qwen25_vl_without_torchvision_points_to_the_gpu_extra(tmp_path):
    assert "qwen2_5_vl" in FAMILIES
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ImportError, match=r"pip install sentiray\[gpu\]"):
        load_model(str(tmp_path), kind="vlm")


# ----------------------------------------------------------------------------- LoRA


def test_lora_adapts_only_the_language_model(tiny_models):
    model, _ = load_model(tiny_models["vlm"])
    _, total_before = count_parameters(model)
    peft_model = apply_lora(model, LORA)
    trainable, total = count_parameters(peft_model)
    assert 0 < trainable < total
    assert total == total_before + trainable  # frozen base plus the adapters
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all(".language_model." in n for n in names)
    # 2 layers x 7 projections x (A, B)
    assert len(names) == 2 * 7 * 2

    # Asked for explicitly, the CLIP tower's attention projections are adapted too.
    model, _ = load_model(tiny_models["vlm"])
    everywhere = apply_lora(model, LORA.model_copy(update={"target_modules": ["q_proj"]}), language_model_only=False)
    adapted = {n.split(".lora_")[0] for n, p in everywhere.named_parameters() if p.requires_grad}
    assert any("vision_tower" in n for n in adapted) and any("language_model" in n for n in adapted)


def test_lora_skips_qwen25_vl_vision_blocks():
    """Qwen2.5-VL's vision MLP is also called gate_proj/up_proj/down_proj: only the decoder's are adapted."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {
        "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 128, "bos_token_id": 0, "eos_token_id": 1,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    }  # fmt: skip
    vision = {
        "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
        "fullatt_block_indexes": [0],
    }  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    assert any(n.startswith("model.visual.") and n.endswith("gate_proj") for n, _ in model.named_modules())
    adapted = {n.split(".lora_")[0] for n, p in apply_lora(model, LORA).named_parameters() if p.requires_grad}
    assert len(adapted) == 7 and all(".language_model." in n for n in adapted)


def test_lora_on_the_causal_lm(tiny_models):
    model, _ = load_model(tiny_models["causal_lm"], kind="causal_lm")
    peft_model = apply_lora(model, LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    trainable, total = count_parameters(peft_model)
    # r * (in + out) per adapted projection: q 64->64, v 64->32, in 2 layers.
    assert trainable == 2 * (2 * (64 + 64) + 2 * (64 + 32))
    assert trainable / total < 0.02


def test_save_merged_and_adapter_give_the_same_logits(tiny_models, tmp_path):
    model, processor = load_model(tiny_models["vlm"])
    base_logits = logits(model, vlm_batch(processor, ["How is the movie?"]))
    peft_model = apply_lora(model, LORA)
    batch = vlm_batch(processor, ["How is the movie?", "Sad"], answers=["positive", "negative"])
    torch.manual_seed(0)
    train_lora_step(peft_model, batch)
    expected = logits(peft_model, batch)
    assert not torch.allclose(logits(peft_model, vlm_batch(processor, ["How is the movie?"])), base_logits)

    merged_dir = save_model(peft_model, processor, str(tmp_path / "merged"), merge_lora=True)
    adapter_dir = save_model(peft_model, processor, str(tmp_path / "adapter"), merge_lora=False)
    assert os.path.isfile(os.path.join(merged_dir, "config.json"))
    assert not os.path.exists(os.path.join(merged_dir, "adapter_config.json"))
    assert os.path.isfile(os.path.join(adapter_dir, "adapter_config.json"))
    assert not os.path.exists(os.path.join(adapter_dir, "model.safetensors"))
    # The adapter names the base it was trained on, so it loads anywhere that base does.
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    assert read_json(config_path)["base_model_name_or_path"] == tiny_models["vlm"]
    # Saving merged left the caller's model an adapter model, still training-ready.
    assert torch.allclose(logits(peft_model, batch), expected)

    merged, merged_processor = load_model(merged_dir)
    assert type(merged).__name__ == "LlavaForConditionalGeneration"
    adapted, _ = load_model(adapter_dir)
    assert type(adapted).__name__ == "PeftModel"
    assert count_parameters(adapted)[0] == 0  # loaded for inference unless asked
    torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(adapted, batch), expected, atol=1e-5, rtol=1e-5)
    assert merged_processor(text=["x"], return_tensors="pt")["input_ids"].shape[0] == 1

    trainable_again, _ = load_model(adapter_dir, is_trainable=True)
    assert count_parameters(trainable_again)[0] == count_parameters(peft_model)[0]

    # An adapter whose base is gone says which base it was looking for.
    config = read_json(config_path)
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    storage.write_json(config_path, config)
    with pytest.raises(ModelNotFoundError, match="moved-away"):
        load_model(adapter_dir)


# ----------------------------------------------------------------------------- s3


def test_load_from_s3_gives_the_same_logits(tiny_models, s3_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIRAY_CACHE", str(tmp_path / "cache"))
    storage.upload_dir(tiny_models["vlm"], s3_uri)
    remote, processor = load_model(s3_uri)
    local, _ = load_model(tiny_models["vlm"])
    batch = vlm_batch(processor, ["How is the movie?"])
    torch.testing.assert_close(logits(remote, batch), logits(local, batch), atol=0, rtol=0)
    assert remote.name_or_path == s3_uri  # not the local cache folder

    # An adapter trained on the s3 base, saved to s3, names the s3 base and loads back.
    peft_model = apply_lora(remote, LORA)
    train_lora_step(peft_model, batch)
    adapter_uri = f"{s3_uri}-adapter"
    save_model(peft_model, processor, adapter_uri, merge_lora=False)
    assert storage.read_json(storage.join(adapter_uri, "adapter_config.json"))["base_model_name_or_path"] == s3_uri
    adapted, _ = load_model(adapter_uri)
    torch.testing.assert_close(logits(adapted, batch), logits(peft_model, batch), atol=1e-5, rtol=1e-5)
