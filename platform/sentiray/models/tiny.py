"""Tiny models in real Hugging Face format, built locally with random weights.

They let every code path (training, distillation, generation, serving, loading from
S3) run on a laptop with no download: the same classes as the real checkpoints, saved
with ``save_pretrained`` and loaded back with the ``Auto*`` classes.

- ``vlm``: LLaVA architecture (CLIP vision tower + Qwen2 decoder) with a ``LlavaProcessor``.
- ``causal_lm``: a Qwen2 decoder with the *same* tokenizer, so it shares the VLM's vocabulary.
- ``encoder``: a BERT text encoder with a WordPiece tokenizer.

Builds are deterministic by seed and idempotent: a folder holding a complete build of
the same recipe and seed is reused as is.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from sentiray.models.tokenizer import (
    IMAGE_TOKEN,
    train_tokenizer,
    train_wordpiece_tokenizer,
)

# Bump when a recipe below changes, so that stale builds on disk are rebuilt.
RECIPE_VERSION = 1
_MARKER = ".sentiray-tiny.json"

# Vision tower: 32x32 images cut into 8x8 patches -> 16 patches + CLS. LLaVA's "default"
# feature strategy drops CLS, so each image becomes exactly 16 <image> tokens.
IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


@contextmanager
def quiet_transformers():
    """Silence transformers' progress bars ("Loading weights", "Writing model shards")
    for the duration, restoring the caller's setting afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _text_config(vocab_size: int, pad_id: int, eos_id: int):
    """The Qwen2 decoder shared by the tiny VLM and the tiny causal LM."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )


def _set_generation_defaults(model, tokenizer) -> None:
    """Stop on either end marker (as Qwen2.5-Instruct does) and pad with <|endoftext|>."""
    gen = model.generation_config
    gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = None


# ----------------------------------------------------------------------------- build + cache


def _build(out_dir: str | os.PathLike, name: str, seed: int, write: Callable[[str], None]) -> str:
    """Run ``write(tmp_dir)`` under a fixed seed and move the result to ``out_dir``.

    Writes into a temporary sibling and renames, so a crash never leaves a half build that
    looks complete, and concurrent builders (e.g. several Ray workers) do not clash.
    """
    out = Path(out_dir).resolve()
    signature = _signature(name, seed)
    if _is_complete(out, signature):
        return str(out)
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).exists():
        # Never delete a folder we did not build (a typo could name someone's home).
        raise FileExistsError(f"{out} exists and is not a tiny-model build; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # fork_rng: seeding must not disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            torch.manual_seed(seed)
            write(str(tmp))
        (tmp / _MARKER).write_text(json.dumps(signature))
        if _is_complete(out, signature):  # another process finished first
            return str(out)
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)  # a stale build (other seed or recipe)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process renamed its build into place first: fine if it is ours too.
            if not _is_complete(out, signature):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _signature(name: str, seed: int) -> dict:
    return {"model": name, "seed": seed, "recipe": RECIPE_VERSION}


def _is_complete(out: Path, signature: dict) -> bool:
    try:
        return json.loads((out / _MARKER).read_text()) == signature
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- the three models


def build_tiny_vlm(out_dir: str | os.PathLike, seed: int = 0, tokenizer=None) -> str:
    """A LLaVA model (CLIP vision + Qwen2 text) and its ``LlavaProcessor`` in ``out_dir``."""

    def write(path: str) -> None:
        # Imported here so that reusing a finished build does not pay for the imports.
        from transformers import (
            CLIPVisionConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil,
        )

        tok = tokenizer if tokenizer is not None else train_tokenizer()
        vision = CLIPVisionConfig(
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=_text_config(len(tok), tok.pad_token_id, tok.eos_token_id),
            image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            image_seq_length=NUM_IMAGE_TOKENS,
            # The last layer (LLaVA's default -2 would leave the last CLIP layer unused,
            # with no gradient, which distributed data parallel complains about).
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=True,
        )
        model = LlavaForConditionalGeneration(config)
        _set_generation_defaults(model, tok)
        model.save_pretrained(path)

        # The PIL backend: the default CLIPImageProcessor needs torchvision (GPU extra).
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            chat_template=tok.chat_template,
            image_token=IMAGE_TOKEN,
            # Expand each <image> to patches + CLS - 1 (the "default" strategy drops CLS).
            patch_size=PATCH_SIZE,
            num_additional_image_tokens=1,
            vision_feature_select_strategy="default",
        )
        processor.save_pretrained(path)

    return _build(out_dir, "vlm", seed, write)


def build_tiny_causal_lm(out_dir: str | os.PathLike, seed: int = 0, tokenizer=None) -> str:
    """A Qwen2 causal LM sharing the VLM's tokenizer (same vocabulary, same chat template)."""

    def write(path: str) -> None:
        from transformers import Qwen2ForCausalLM

        tok = tokenizer if tokenizer is not None else train_tokenizer()
        model = Qwen2ForCausalLM(_text_config(len(tok), tok.pad_token_id, tok.eos_token_id))
        _set_generation_defaults(model, tok)
        model.save_pretrained(path)
        tok.save_pretrained(path)

    return _build(out_dir, "causal_lm", seed, write)


def build_tiny_encoder(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """A BERT text encoder with a locally trained WordPiece tokenizer."""

    def write(path: str) -> None:
        from transformers import BertConfig, BertModel

        tok = train_wordpiece_tokenizer()
        config = BertConfig(
            vocab_size=len(tok),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
        )
        BertModel(config).save_pretrained(path)
        tok.save_pretrained(path)

    return _build(out_dir, "encoder", seed, write)


def build_tiny_vision(
    out_dir: str | os.PathLike, seed: int = 0, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE
) -> str:
    """A CLIP vision tower alone (``CLIPVisionModel``, loaded with ``AutoModel``) and its image
    processor (``AutoImageProcessor``): the image encoder of LRSA-style models."""

    def write(path: str) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        config = CLIPVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        CLIPVisionModel(config).save_pretrained(path)
        # The PIL backend: the default CLIPImageProcessor needs torchvision (GPU extra).
        CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ).save_pretrained(path)

    name = "vision" if (image_size, patch_size) == (IMAGE_SIZE, PATCH_SIZE) else f"vision-{image_size}-{patch_size}"
    return _build(out_dir, name, seed, write)


def build_tiny_models(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """All three tiny models under ``out_dir``: ``{"vlm": ..., "causal_lm": ..., "encoder": ...}``."""
    root = Path(out_dir)
    paths = {name: root / name for name in ("vlm", "causal_lm", "encoder")}
    shared = None
    if not all(_is_complete(p.resolve(), _signature(n, seed)) for n, p in paths.items()):
        shared = train_tokenizer()  # one training run for the two models that share it
    return {
        "vlm": build_tiny_vlm(paths["vlm"], seed, tokenizer=shared),
        "causal_lm": build_tiny_causal_lm(paths["causal_lm"], seed, tokenizer=shared),
        "encoder": build_tiny_encoder(paths["encoder"], seed),
    }


# ----------------------------------------------------------------------------- the stage

SUCCESS = "_SUCCESS.json"


def run(cfg) -> dict:
    """Stage ``models``: every tiny model under ``models.output``: ``vlm``, ``causal_lm``,
    ``encoder``, ``vision``, and ``student-init`` (a VLM of another seed, sharing the tokenizer)."""
    from sentiray import tracking
    from sentiray.data import storage
    from sentiray.models.loading import count_parameters, load_model

    m = cfg.models
    out = os.path.abspath(cfg.resolve(m.output))
    with tracking.stage_run(cfg, "models"):
        paths = build_tiny_models(out, seed=m.seed)
        paths["vision"] = build_tiny_vision(os.path.join(out, "vision"), seed=m.seed)
        tokenizer = None
        if not _is_complete(Path(out, "student-init").resolve(), _signature("vlm", m.student_seed)):
            from transformers import AutoProcessor

            tokenizer = AutoProcessor.from_pretrained(paths["vlm"]).tokenizer  # the assistant's vocabulary
        paths["student-init"] = build_tiny_vlm(
            os.path.join(out, "student-init"), seed=m.student_seed, tokenizer=tokenizer
        )
        sizes = {}
        for name, path in paths.items():
            if name == "vision":  # an image processor, no tokenizer
                from transformers import AutoModel

                with quiet_transformers():
                    model = AutoModel.from_pretrained(path)
            else:
                model, _ = load_model(path, kind="vlm" if name == "student-init" else name)
            sizes[name] = count_parameters(model)[1]
        tracking.log_metrics({f"params_{k.replace('-', '_')}": v for k, v in sizes.items()})
    summary = {"output": out, "models": paths, "parameters": sizes}
    storage.write_json(os.path.join(out, SUCCESS), summary)  # written last: the stage is complete
    print("models: " + ", ".join(f"{k} {sizes[k]:,d} parameters" for k in paths) + f"; in {out}")
    return summary
