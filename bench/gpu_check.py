"""GPU check of the training path: bf16, DeepSpeed ZeRO-0/2/3 on CUDA, real model sizes,
knowledge distillation, and Qwen2.5-VL through our loading, encoding and generation code.

    python bench/gpu_check.py                         # on a CUDA machine (the real sizes)
    python bench/gpu_check.py --device cpu --tiny     # a quick run of every path on a laptop
    PYTHONPATH=platform python bench/gpu_check.py ... # without installing the project

What it does (every model is random-initialised from a config written here; no hub):

1. builds, saves and loads back through ``sentiray.models.loading.load_model(dtype="bfloat16")``
   (a) a LLaVA VLM with Qwen2.5-0.5B's text decoder (hidden 896, 24 layers, 14/2 heads,
       MLP 4864, Qwen's padded vocabulary of 151,936 rows: ~0.5B parameters) and
   (b) one with Qwen2.5-3B's (hidden 2048, 36 layers, 16/2 heads, MLP 11008: ~3.1B),
   both with a small CLIP tower and the tiny tokenizer / LLaVA processor of
   ``sentiray.models.tiny`` (the vocabulary rows past the tokenizer are never used as
   input, exactly as in Qwen's own checkpoints, but the LM head and the loss pay for
   all of them, as they do in real training), and
   (c) a tiny Qwen2.5-VL with a real ``Qwen2_5_VLProcessor`` (Qwen's chat template and
   vision tokens), loaded with ``load_model(kind="vlm")``; then ``Generator.generate``,
   ``Generator.label_logprobs`` and a few MulCoT training steps on image+text batches,
   checked against the processor's own full output;
2. for (a) and (b): the MulCoT assistant loss (chain + label streams, target tokens only)
   on synthetic msc rows with ``gold_chain`` chains, batch 4, N optimizer steps through
   ``deepspeed.initialize`` exactly as ``sentiray.train.loop`` does it (torch AdamW,
   ``deepspeed_config.build(TrainConfig(precision="bf16", zero_stage=z))``,
   ``dist_init_required=False``) for ZeRO 0, 2 and 3, and a plain PyTorch bf16 loop
   (torch AdamW on the bf16 weights, no DeepSpeed) as the baseline; samples/s after the
   warm-up steps, peak GPU memory, loss first -> last; plus the dev evaluation
   (``family.evaluate``) on the engine's module and, for (a), the ZeRO-aware HF export of
   ``loop._export_hf`` loaded back;
3. one MulCoT student run with KD (frozen assistant = model (a), student = another
   (a)-sized model) under DeepSpeed ZeRO-2 bf16;
4. prints a markdown table and writes a markdown report (``--report``, rewritten after every
   run, so a run cut short keeps the finished rows); ``--profile`` adds a torch.profiler
   breakdown of 3 extra steps per training run.

On a 3B model at batch 8 or more, run with ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``:
without it DeepSpeed ZeRO-2 ran out of memory from fragmentation on an 80 GB H100
(bench/results/gpu_check_h100.md).

Every run is a fresh subprocess (torch.distributed with env:// and world size 1, as one
Ray Train worker has): peak memory is per run and DeepSpeed's global state never leaks
from one run into the next. A run that fails is reported with its error; the rest go on.

``--proposed-fixes`` (on by default) also runs the KD and Qwen2.5-VL checks on a
temporary copy of the source tree with :data:`PROPOSED_FIXES` applied (a diff of
``platform/``), next to the stock code, so the report shows both what breaks and that the
fix works. When the diff no longer applies (say, it was merged), only the stock code runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STOCK_SRC = os.path.join(REPO, "platform")
# A worker may be pointed at another source tree (the patched copy).
SRC = os.environ.get("GPU_CHECK_SRC") or STOCK_SRC
if os.path.isdir(SRC):
    sys.path.insert(0, SRC)

# Qwen2.5 text decoders (config.json of Qwen/Qwen2.5-0.5B-Instruct and -3B-Instruct).
QWEN_VOCAB = 151_936
SIZES = {
    "a": dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864
    ),
    "b": dict(
        hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008
    ),
}
TINY_SIZES = {
    "a": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
    "b": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256
    ),
}
# A small CLIP tower on the tiny processor's 32x32 images (16 image tokens per image).
VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)

# Qwen2.5-VL-*-Instruct's chat template (chat_template.json of the hub checkpoints).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_VL_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# The fixes this check found needed, as a diff of the source root (see the module doc).
PROPOSED_FIXES = r'''--- a/sentiray/models/generation.py
+++ b/sentiray/models/generation.py
@@ -6,6 +6,7 @@

 from __future__ import annotations

+import dataclasses
 from dataclasses import dataclass
 from typing import Any, Sequence

@@ -95,7 +96,7 @@
             base = self.encoder.encode_prompt(prompt, image)
             for label in labels:
                 target = self.encoder.target_ids(label_target(label), add_eos=False)
-                items.append(type(base)(base.input_ids + target, base.prompt_len, base.pixel_values))
+                items.append(dataclasses.replace(base, input_ids=base.input_ids + target))
         batch = self._to_device(self.encoder.collate(items))
         labels_t = batch.pop("labels")
         logits = self.model(**batch).logits[:, :-1].float()
--- a/sentiray/models/inputs.py
+++ b/sentiray/models/inputs.py
@@ -7,7 +7,7 @@

 from __future__ import annotations

-from dataclasses import dataclass
+from dataclasses import dataclass, field
 from typing import Any, Sequence

 import torch
@@ -20,11 +20,19 @@

 @dataclass
 class Encoded:
-    """One sequence: token ids, the number of leading prompt tokens, optional pixels."""
+    """One sequence: token ids, the number of leading prompt tokens, optional pixels.
+
+    ``image_extras``: the processor's other per-image outputs (Qwen2-VL's ``image_grid_thw``),
+    concatenated over a batch like the pixels. ``token_extras``: its per-token outputs over
+    the prompt (Qwen2-VL's ``mm_token_type_ids``, which its 3D rotary positions need),
+    0 on target and padding tokens.
+    """

     input_ids: list[int]
     prompt_len: int
-    pixel_values: torch.Tensor | None = None  # (1, C, H, W)
+    pixel_values: torch.Tensor | None = None  # LLaVA: (1, C, H, W); Qwen2-VL: (patches, dim)
+    image_extras: dict[str, torch.Tensor] = field(default_factory=dict)
+    token_extras: dict[str, list[int]] = field(default_factory=dict)


 class PromptEncoder:
@@ -47,7 +55,17 @@
         text = self.chat_text(prompt, use_image)
         if use_image:
             out = self.processor(text=[text], images=[image], return_tensors="pt")
-            return Encoded(out["input_ids"][0].tolist(), int(out["input_ids"].shape[1]), out["pixel_values"])
+            ids = out["input_ids"]
+            image_extras: dict[str, torch.Tensor] = {}
+            token_extras: dict[str, list[int]] = {}
+            for key, value in out.items():
+                if key in ("input_ids", "attention_mask", "pixel_values") or not isinstance(value, torch.Tensor):
+                    continue
+                if value.shape == ids.shape:
+                    token_extras[key] = value[0].tolist()
+                else:
+                    image_extras[key] = value
+            return Encoded(ids[0].tolist(), int(ids.shape[1]), out["pixel_values"], image_extras, token_extras)
         ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
         return Encoded(list(ids), len(ids))

@@ -76,7 +94,17 @@
             mask[i, start : start + n] = 1
             labels[i, start + e.prompt_len : start + n] = torch.tensor(e.input_ids[e.prompt_len :], dtype=torch.long)
         batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
+        for key in sorted({k for e in items for k in e.token_extras}):
+            values = torch.zeros((len(items), width), dtype=torch.long)
+            for i, e in enumerate(items):
+                row = e.token_extras.get(key)
+                if row:
+                    start = width - len(e.input_ids) if left_pad else 0
+                    values[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
+            batch[key] = values
         pixels = [e.pixel_values for e in items if e.pixel_values is not None]
         if pixels:
             batch["pixel_values"] = torch.cat(pixels, dim=0)
+            for key in sorted({k for e in items for k in e.image_extras}):
+                batch[key] = torch.cat([e.image_extras[key] for e in items if e.pixel_values is not None], dim=0)
         return batch
--- a/sentiray/train/mulcot.py
+++ b/sentiray/train/mulcot.py
@@ -141,6 +141,10 @@
         total = None
         parts: dict[str, float] = {}
         device = next(model.parameters()).device
+        if self.teacher is not None and next(self.teacher.parameters()).device != device:
+            # DeepSpeed moved the student to its GPU; the frozen assistant (loaded on the
+            # CPU, outside the engine) must follow, or its forward fails on mixed devices.
+            self.teacher.to(device)
         for key in ("c", "l"):
             if key not in batch:
                 continue
'''


# ============================================================================= helpers


def _log(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _error(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    return text[-2500:]


def _short(err: str) -> str:
    """The last line of a traceback (the exception), shortened for a table cell."""
    last = [line for line in err.strip().splitlines() if line.strip()][-1] if err.strip() else err
    return (last[:160] + "...") if len(last) > 160 else last


def _device(args: dict[str, Any]):
    import torch

    return torch.device("cuda", 0) if args["device"] == "cuda" else torch.device("cpu")


def _peak_gb() -> tuple[float, float]:
    import torch

    if not torch.cuda.is_available():
        return float("nan"), float("nan")
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _init_dist(device) -> None:
    """torch.distributed with env://, world size 1: what one Ray Train worker has."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")


# ============================================================================= builds


def _tiny_processor_dir(root: str) -> str:
    from sentiray.models.tiny import build_tiny_vlm

    return build_tiny_vlm(os.path.join(root, "tiny-vlm"))


def job_build_llava(args: dict[str, Any]) -> dict[str, Any]:
    """A LLaVA VLM of the given text size with the tiny tokenizer, processor and a small CLIP tower."""
    import torch
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from sentiray.models.tiny import quiet_transformers

    tiny = _tiny_processor_dir(args["root"])
    processor = AutoProcessor.from_pretrained(tiny)
    cfg = AutoConfig.from_pretrained(tiny)
    text = dict(args["text"])
    text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    for key, value in text.items():
        setattr(cfg.text_config, key, value)
    # One attention type per layer; the tiny config lists its own two.
    cfg.text_config.layer_types = ["full_attention"] * text["num_hidden_layers"]
    cfg.text_config.max_window_layers = text["num_hidden_layers"]
    if args.get("vocab_size"):
        # Qwen pads its embedding matrix past the tokenizer; so do we (unused rows).
        cfg.text_config.vocab_size = args["vocab_size"]
    for key, value in args["vision"].items():
        setattr(cfg.vision_config, key, value)
    device = _device(args)
    torch.manual_seed(args["seed"])
    start = time.perf_counter()
    with torch.device(device), quiet_transformers():
        model = LlavaForConditionalGeneration(cfg)
    model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    with quiet_transformers():
        model.save_pretrained(args["out"])
        processor.save_pretrained(args["out"])
    return {"path": args["out"], "params": params, "build_s": time.perf_counter() - start}


def _qwen_tokenizer():
    """The tiny BPE tokenizer with Qwen2-VL's vision tokens and Qwen's chat template.

    Without the ``image_token`` attribute the tiny tokenizer carries for LLaVA:
    Qwen2_5_VLProcessor uses ``tokenizer.image_token`` when there is one.
    """
    from transformers import PreTrainedTokenizerFast

    from sentiray.models.tokenizer import IM_END, PAD_TOKEN, train_tokenizer

    backend = train_tokenizer().backend_tokenizer
    backend.add_special_tokens(QWEN_VL_SPECIAL)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        padding_side="right",
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tok


def _qwen_processor(tok, video: bool = True):
    """Qwen2_5_VLProcessor with small image sizes: a 64x64 picture -> 56x56 -> 4x4 patches
    of 14 -> 4 image tokens after the 2x2 merge."""
    from transformers import Qwen2_5_VLProcessor

    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16}
    try:
        from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        video_processor = (
            Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2) if video else None
        )
    except (ImportError, ValueError):  # no torchvision: the PIL image processor, no video
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        image_processor = Qwen2VLImageProcessorPil(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        video_processor = None
    if video_processor is None:
        # Only where torchvision is missing (a laptop check): the processor insists on a
        # video processor, which needs torchvision; images alone do not.
        class _ImagesOnly(Qwen2_5_VLProcessor):
            def check_argument_for_proper_class(self, name, arg):
                return None if arg is None else super().check_argument_for_proper_class(name, arg)

        return _ImagesOnly(
            image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=QWEN_VL_CHAT_TEMPLATE
        )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def job_build_qwen(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sentiray.models.tiny import quiet_transformers

    tok = _qwen_tokenizer()
    processor = _qwen_processor(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_VL_SPECIAL}
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(args["seed"])
    with quiet_transformers():
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        gen = model.generation_config
        gen.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
        gen.pad_token_id = tok.pad_token_id
        gen.bos_token_id = None
        model.save_pretrained(args["out"])
        if processor.video_processor is not None:  # else (no torchvision) the check builds it in memory
            processor.save_pretrained(args["out"])
    return {"path": args["out"], "params": sum(p.numel() for p in model.parameters()), "token_ids": ids}


# ============================================================================= training runs


def _job_config(
    args: dict[str, Any], zero: int, role: str = "assistant", teacher: str | None = None, precision: str = "bf16"
):
    from sentiray import config

    raw: dict[str, Any] = {
        "stage": "train",
        "storage": {"root": args["root"]},
        "data": {"format": "synthetic", "task": "msc", "output": "data"},
        "model": {"path": args["model"], "kind": "vlm", "dtype": "bfloat16" if precision == "bf16" else "float32"},
        "train": {
            "role": role,
            "chain_column": "gold_chain",
            "batch_size": args["batch_size"],
            "precision": precision,
            "zero_stage": zero,
            "scheduler": "constant",
            "lr": args["lr"],
            "grad_clip": 1.0,
            "max_steps": args["steps"],
            "use_gpu": args["device"] == "cuda",
            "max_length": 512,
            "output": os.path.join(args["root"], "out"),
            "seed": 0,
        },
    }
    if teacher is not None:
        raw["distill"] = {"teacher_path": teacher, "lambda_kd": 0.5, "tau": 2.0}
    return config.validate(raw, source="gpu_check")


def _rows(n: int = 200):
    from sentiray.data import synthetic

    ds = synthetic.generate("msc", n)
    return ds.splits["train"], ds.splits["dev"]


def _family(job):
    from sentiray.data import schema
    from sentiray.train import families

    family = families.create(job)
    # The rows come from the generator here rather than from a prepared data set on disk.
    family.task = "msc"
    family.labels = schema.labels_for("msc")
    return family


def job_train(args: dict[str, Any]) -> dict[str, Any]:
    """N optimizer steps of the MulCoT loss, through DeepSpeed as loop.py does, or plain PyTorch."""
    import torch

    from sentiray.models.loading import count_parameters
    from sentiray.train import deepspeed_config
    from sentiray.train.loop import make_scheduler, micro_batches

    device = _device(args)
    precision = args.get("precision", "bf16")
    zero = args.get("zero", 0)
    job = _job_config(args, zero, role=args.get("role", "assistant"), teacher=args.get("teacher"), precision=precision)
    train = job.train
    torch.manual_seed(train.seed)
    train_rows, dev_rows = _rows()
    family = _family(job)
    result: dict[str, Any] = {"stages": {}}
    t0 = time.perf_counter()
    model = family.build_model()
    result["stages"]["load_s"] = time.perf_counter() - t0
    result["params"] = count_parameters(model)[1]
    result["model_dtype"] = str(next(model.parameters()).dtype)
    if family.teacher is not None:
        result["teacher_device_after_build"] = str(next(family.teacher.parameters()).device)
    total_steps = args["steps"]
    batches = micro_batches(len(train_rows), 0, 1, train.batch_size, train.seed, 0)
    batches = (batches * (1 + total_steps // len(batches)))[:total_steps]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, eps=1e-8)
    scheduler = make_scheduler(optimizer, train, total_steps)
    if args["engine"] == "deepspeed":
        import deepspeed

        _init_dist(device)
        ds_config = deepspeed_config.build(train, 1)
        result["ds_config"] = ds_config
        t0 = time.perf_counter()
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
            dist_init_required=False,
        )
        result["stages"]["ds_init_s"] = time.perf_counter() - t0
        result["optimizer"] = type(optimizer).__name__
    else:
        model.to(device)
        engine = model

    engine.train()
    losses: list[float] = []
    parts_log: list[dict[str, float]] = []
    warmup = args["warmup"]
    start = None
    collate_s = 0.0  # CPU time building batches (images, chat template, tokenizer) in the timed steps

    def one_step(indices: list[int], timed: bool) -> dict[str, float]:
        nonlocal collate_s
        t_collate = time.perf_counter()
        batch = family.collate([train_rows[i] for i in indices])
        if timed:
            collate_s += time.perf_counter() - t_collate
        loss, parts = family.loss(engine, batch)
        if args["engine"] == "deepspeed":
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return parts

    for step, indices in enumerate(batches):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        parts = one_step(indices, start is not None)
        losses.append(float(parts["loss"]))
        parts_log.append(parts)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss is {losses[-1]} at step {step + 1}")
    _sync(device)
    elapsed = time.perf_counter() - start if start is not None else float("nan")
    timed = len(batches) - warmup
    result.update(
        samples_per_s=timed * train.batch_size / elapsed if timed > 0 else float("nan"),
        step_s=elapsed / timed if timed > 0 else float("nan"),
        collate_step_s=collate_s / timed if timed > 0 else float("nan"),
        losses=losses,
        parts_first=parts_log[0],
        parts_last=parts_log[-1],
    )
    result["peak_alloc_gb"], result["peak_reserved_gb"] = _peak_gb()
    if args.get("profile"):
        result["profile"] = _profile(lambda idx: one_step(idx, False), batches[:3], device)
    k = min(3, len(losses) // 2) or 1
    result["loss_decreased"] = sum(losses[-k:]) / k < sum(losses[:k]) / k

    # The dev evaluation loop.py runs at each epoch end (label scoring on the engine's module).
    if args.get("evaluate"):
        try:
            t0 = time.perf_counter()
            inner = engine.module if hasattr(engine, "module") else engine
            combined = family.evaluate(inner, dev_rows[: args["evaluate"]])
            result["dev"] = family.summarize(combined) | {
                "count": combined["count"],
                "eval_s": time.perf_counter() - t0,
            }
        except Exception as exc:  # noqa: BLE001 - reported
            result["dev_error"] = _error(exc)
    # The end-of-epoch HF export (ZeRO-3 gathers the shards first), loaded back.
    if args.get("export") and args["engine"] == "deepspeed":
        try:
            result["export"] = _check_export(engine, family, args)
        except Exception as exc:  # noqa: BLE001 - reported
            result["export_error"] = _error(exc)
    return result


def _profile(step, batches, device) -> dict[str, Any]:
    """Where a step's time goes: GPU kernel time against wall time, top ops by each."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _sync(device)
        t0 = time.perf_counter()
        for indices in batches:
            step(indices)
        _sync(device)
        wall = time.perf_counter() - t0
    ka = prof.key_averages()
    gpu_us = sum(
        getattr(e, "self_device_time_total", 0)
        for e in ka
        if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)
    )
    out = {
        "steps": len(batches),
        "wall_s": wall,
        "gpu_kernel_s": gpu_us / 1e6,
        "top_gpu": ka.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60),
        "top_cpu": ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60),
    }
    print(
        f"[gpu_check] profile: {len(batches)} steps, wall {wall:.3f}s, GPU kernels {gpu_us / 1e6:.3f}s\n"
        f"{out['top_gpu']}\n{out['top_cpu']}",
        flush=True,
    )
    return out


def _check_export(engine, family, args: dict[str, Any]) -> dict[str, Any]:

    from sentiray.models.loading import count_parameters, load_model
    from sentiray.train.loop import _export_hf

    out = os.path.join(args["root"], f"export-z{args['zero']}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    _export_hf(engine, family, out, rank=0)
    seconds = time.perf_counter() - t0
    loaded, _ = load_model(out, kind="vlm", dtype="bfloat16")
    # Compare a trained tensor (the final norm: all ones at init) with the engine's.
    name = next(
        n
        for n, _ in loaded.named_parameters()
        if n.endswith("norm.weight") and "language_model" in n and "layers" not in n
    )
    saved = dict(loaded.named_parameters())[name].detach().float().cpu()
    param = dict(engine.module.named_parameters())[name]
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            live = param.detach().float().cpu().clone()
    else:
        live = param.detach().float().cpu()
    return {
        "seconds": seconds,
        "params_loaded": count_parameters(loaded)[1],
        "checked": name,
        "max_abs_diff": float((saved - live).abs().max()),
        "moved_from_init": float((saved - 1).abs().max()),
        "files": sorted(os.listdir(out)),
    }


# ============================================================================= Qwen2.5-VL


def job_qwen(args: dict[str, Any]) -> dict[str, Any]:
    """Load the tiny Qwen2.5-VL through load_model; generate, score labels, train a few steps."""
    import torch

    from sentiray import prompts
    from sentiray.data import images, schema
    from sentiray.models.generation import Generator
    from sentiray.models.inputs import PromptEncoder
    from sentiray.models.loading import load_model

    device = _device(args)
    dtype = torch.bfloat16 if args.get("precision", "bf16") == "bf16" else torch.float32
    out: dict[str, Any] = {"checks": {}}
    checks = out["checks"]

    def check(name: str, fn):
        try:
            checks[name] = {"ok": True, **(fn() or {})}
        except Exception as exc:  # noqa: BLE001 - reported
            checks[name] = {"ok": False, "error": _error(exc)}
            _log(f"qwen check {name} FAILED: {_short(checks[name]['error'])}")
        return checks[name]["ok"]

    state: dict[str, Any] = {}

    def load():
        if args.get("direct_processor"):
            # No torchvision here: load_model would refuse (rightly); build the model alone.
            from transformers import AutoModelForImageTextToText

            state["model"] = AutoModelForImageTextToText.from_pretrained(args["model"], dtype=dtype)
            state["processor"] = _qwen_processor(_qwen_tokenizer(), video=False)
        else:
            state["model"], state["processor"] = load_model(args["model"], kind="vlm", dtype=str(dtype).split(".")[-1])
        state["model"].to(device)
        proc, tok = state["processor"], getattr(state["processor"], "tokenizer", None)
        return {
            "model_class": type(state["model"]).__name__,
            "processor_class": type(proc).__name__,
            "image_processor": type(proc.image_processor).__name__,
            "video_processor": type(getattr(proc, "video_processor", None)).__name__,
            "image_token": getattr(proc, "image_token", None),
            "image_token_id": getattr(proc, "image_token_id", None),
            "tokenizer_has_chat_template": bool(getattr(tok, "chat_template", None)),
            "processor_has_chat_template": bool(getattr(proc, "chat_template", None)),
        }

    if not check("load_model", load):
        return out
    model, processor = state["model"], state["processor"]
    _, dev_rows = _rows()
    rows = dev_rows[:3]
    texts = [prompts.render("label", r) for r in rows]
    imgs = [images.load(r) for r in rows]
    labels = schema.labels_for("msc")

    def prompt_tokens():
        enc = PromptEncoder(processor)
        chat = enc.chat_text(texts[0], True)
        item = enc.encode_prompt(texts[0], imgs[0])
        n_img = sum(1 for t in item.input_ids if t == processor.image_token_id)
        keys = sorted(enc.collate([item]).keys())
        ref_keys = sorted(processor(text=[chat], images=[imgs[0]], return_tensors="pt").keys())
        return {
            "chat_text": chat[:400],
            "image_tokens_in_prompt": n_img,
            "prompt_len": item.prompt_len,
            "pixel_values_shape": list(item.pixel_values.shape),
            "our_batch_keys": keys,
            "processor_keys": ref_keys,
        }

    check("encode_prompt", prompt_tokens)

    def match_processor():
        """Our encoder's batch vs the processor's full output: same logits means nothing the
        model needs (image_grid_thw, mm_token_type_ids) was dropped on the way."""
        enc = PromptEncoder(processor)
        chat = enc.chat_text(texts[0], True)
        ref_in = processor(text=[chat], images=[imgs[0]], return_tensors="pt")
        ref_in = {
            k: (v.to(device, dtype) if k == "pixel_values" else v.to(device))
            for k, v in ref_in.items()
            if isinstance(v, torch.Tensor)
        }
        batch = enc.collate([enc.encode_prompt(texts[0], imgs[0])])
        batch.pop("labels")
        ours = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in batch.items()}
        with torch.inference_mode():
            ref = model(**ref_in).logits.float()
            got = model(**ours).logits.float()
        diff = float((ref - got).abs().max())
        if diff > 1e-3:
            raise AssertionError(
                f"logits from our encoder differ from the processor's full output by {diff:.4g} "
                f"(our keys {sorted(ours)}, processor's {sorted(ref_in)})"
            )
        found = {"max_abs_diff": diff}
        if "mm_token_type_ids" in ref_in:
            # What dropping it costs: transformers then silently falls back to 1D positions.
            with torch.inference_mode():
                alt = model(**{k: v for k, v in ref_in.items() if k != "mm_token_type_ids"}).logits.float()
            found["max_abs_diff_without_mm_token_type_ids"] = float((ref - alt).abs().max())
        return found

    check("logits_match_processor", match_processor)

    def generate():
        gen = Generator(model, processor, max_new_tokens=8)
        res = gen.generate(texts, imgs)
        return {"texts": [g.text[:60] for g in res], "new_tokens": [g.new_tokens for g in res]}

    check("generate", generate)

    def score():
        gen = Generator(model, processor)
        lp = gen.label_logprobs(texts, imgs, labels)
        if tuple(lp.shape) != (len(texts), len(labels)) or not torch.isfinite(lp).all():
            raise AssertionError(f"label_logprobs gave {tuple(lp.shape)}: {lp}")
        # Batched scoring (right padding, 3 prompts x 3 labels) must equal one at a time.
        single = torch.stack([gen.label_logprobs([t], [im], labels)[0] for t, im in zip(texts, imgs)])
        return {
            "shape": list(lp.shape),
            "logprobs_row0": [round(float(x), 3) for x in lp[0]],
            "batched_vs_single_max_diff": float((lp - single).abs().max()),
        }

    check("label_logprobs", score)
    model = None  # free it before the training check loads its own copy
    state.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if args.get("train_steps") and not args.get("direct_processor"):

        def train():
            sub = dict(args, engine="deepspeed", zero=2, steps=args["train_steps"], warmup=1, evaluate=6, export=False)
            res = job_train(sub)
            if "dev_error" in res:
                raise RuntimeError("dev evaluation failed:\n" + res["dev_error"])
            return {
                k: res[k] for k in ("losses", "loss_decreased", "samples_per_s", "peak_alloc_gb", "dev", "parts_last")
            }

        check("mulcot_train_zero2", train)
    return out


# ============================================================================= orchestration


JOBS = {"build_llava": job_build_llava, "build_qwen": job_build_qwen, "train": job_train, "qwen": job_qwen}


def worker(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    result: dict[str, Any]
    try:
        result = {"ok": True, **JOBS[spec["job"]](spec)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "error": _error(exc)}
        try:
            result["peak_alloc_gb"], result["peak_reserved_gb"] = _peak_gb()
        except Exception:  # noqa: BLE001
            pass
        _log(f"job {spec.get('name')} FAILED:\n{result['error']}")
    with open(spec["result"], "w") as f:
        json.dump(result, f, default=str)
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


def run_job(
    name: str, spec: dict[str, Any], root: str, src: str | None = None, timeout: float = 1800
) -> dict[str, Any]:
    """Run one job in a fresh Python process; returns its result dict."""
    spec = dict(spec, name=name, root=root)
    spec_path = os.path.join(root, f"job-{name}.json")
    spec["result"] = os.path.join(root, f"result-{name}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if src:
        env["GPU_CHECK_SRC"] = src
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    _log(f"--- {name} ({'patched' if src else 'stock'} code)")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", spec_path], env=env, timeout=timeout, check=False
        )
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    wall = time.perf_counter() - start
    try:
        with open(spec["result"]) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"ok": False, "error": f"worker exited with {code} and wrote no result (killed? out of memory?)"}
    result["wall_s"] = wall
    result["exit"] = code
    _log(f"--- {name}: {'ok' if result.get('ok') else 'FAILED'} in {wall:.0f}s")
    return result


def patched_source(root: str) -> str | None:
    """A copy of the source root with PROPOSED_FIXES applied, or None when it does not apply."""
    dst = os.path.join(root, "patched-src")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(STOCK_SRC, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    patch_file = os.path.join(root, "proposed-fixes.diff")
    with open(patch_file, "w") as f:
        f.write(PROPOSED_FIXES)
    tool = ["patch", "-p1", "--forward", "--no-backup-if-mismatch", "-i", patch_file]
    try:
        proc = subprocess.run(tool + ["--dry-run"], cwd=dst, capture_output=True, text=True, check=False)
    except FileNotFoundError:  # no patch(1): git apply works outside a repository too
        tool = ["git", "apply", "-p1", patch_file]
        proc = subprocess.run(tool + ["--check"], cwd=dst, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        _log(f"the proposed fixes do not apply to this tree (already merged?): {proc.stdout}{proc.stderr}")
        return None
    subprocess.run(tool, cwd=dst, check=True, capture_output=True)
    return dst


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": sys.version.split()[0]}
    code = (
        "import json, torch, transformers\n"
        "v = {'torch': torch.__version__, 'transformers': transformers.__version__, 'cuda': str(torch.version.cuda)}\n"
        "v['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'\n"
        "try:\n import deepspeed; v['deepspeed'] = deepspeed.__version__\n"
        "except Exception as e: v['deepspeed'] = 'unavailable: ' + repr(e)[:200]\n"
        "for m in ('peft', 'accelerate', 'pydantic', 'torchvision'):\n"
        " try: v[m] = __import__(m).__version__\n"
        " except Exception as e: v[m] = 'unavailable'\n"
        "print('VERSIONS ' + json.dumps(v))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("VERSIONS "):
            out.update(json.loads(line[len("VERSIONS ") :]))
    if "torch" not in out:
        out["error"] = proc.stderr[-500:]
    return out


def fmt_params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def fmt_loss(res: dict[str, Any]) -> str:
    losses = res.get("losses") or []
    if not losses:
        return "-"
    mark = "decreases" if res.get("loss_decreased") else "DOES NOT decrease"
    return f"{losses[0]:.3f} -> {losses[-1]:.3f} ({mark})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a laptop check of every path)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (20; tiny: 6)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (3; tiny: 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--models", default="a,b", help="which of the LLaVA sizes to train (a: 0.5B, b: 3B)")
    parser.add_argument("--zero", default="0,2,3", help="ZeRO stages to run")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: plain,kd,qwen,export,eval")
    parser.add_argument("--profile", action="store_true", help="profile 3 extra steps of each training run")
    parser.add_argument("--no-proposed-fixes", action="store_true", help="run the stock code only")
    parser.add_argument("--workdir", default=None, help="where models and results go (default: a temporary folder)")
    parser.add_argument("--report", default=None, help="write the markdown report here too")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    steps = args.steps or (6 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    skip = set(filter(None, args.skip.split(",")))
    root = args.workdir or tempfile.mkdtemp(prefix="gpu-check-")
    os.makedirs(root, exist_ok=True)
    base = {
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "steps": steps,
        "warmup": warmup,
    }
    started = time.perf_counter()
    ver = versions()
    device_line = (
        f"device: {ver.get('gpu')} | python {ver.get('python')} | torch {ver.get('torch')} (CUDA {ver.get('cuda')}) | "
        f"transformers {ver.get('transformers')} | deepspeed {ver.get('deepspeed')} | peft {ver.get('peft')} | "
        f"pydantic {ver.get('pydantic')} | torchvision {ver.get('torchvision')}"
    )
    _log(device_line)
    _log(
        f"workdir {root}; {steps} steps per run ({warmup} warm-up), batch {args.batch_size}, lr {args.lr}, {args.precision}"
    )

    patched = None if args.no_proposed_fixes else patched_source(root)
    results: dict[str, dict[str, Any]] = {}

    # ---- builds
    sizes = TINY_SIZES if args.tiny else SIZES
    vision = TINY_VISION if args.tiny else VISION
    vocab = None if args.tiny else QWEN_VOCAB
    models: dict[str, dict[str, Any]] = {}
    wanted = [m for m in args.models.split(",") if m]
    need_student = "kd" not in skip and "a" in wanted
    for name, seed in [(m, 0) for m in wanted] + ([("a_student", 1)] if need_student else []):
        size = sizes[name.split("_")[0]]
        res = run_job(
            f"build-{name}",
            dict(
                base,
                job="build_llava",
                text=size,
                vision=vision,
                vocab_size=vocab,
                seed=seed,
                out=os.path.join(root, f"llava-{name}"),
            ),
            root,
        )
        results[f"build-{name}"] = res
        if res.get("ok"):
            models[name] = res
            _log(f"model {name}: {res['params'] / 1e6:.1f}M parameters, built in {res['build_s']:.0f}s")
    if "qwen" not in skip:
        res = run_job(
            "build-qwen", dict(base, job="build_qwen", seed=0, out=os.path.join(root, "qwen2_5_vl-tiny")), root
        )
        results["build-qwen"] = res

    def save(table: list[dict[str, Any]]) -> str:
        """Write the report so far (a run cut short still leaves the finished rows)."""
        report = render_report(
            device_line, ver, base, table, results, patched is not None, time.perf_counter() - started, args
        )
        with open(os.path.join(root, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
        if args.report:
            os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
            with open(args.report, "w") as f:
                f.write(report)
            with open(os.path.splitext(args.report)[0] + ".json", "w") as f:
                json.dump(results, f, indent=1, default=str)
        return report

    # ---- training runs
    table: list[dict[str, Any]] = []
    for name in wanted:
        if name not in models:
            continue
        path = models[name]["path"]
        label = f"({name}) LLaVA {fmt_params(models[name]['params'])}"
        runs = ([] if "plain" in skip else [("plain", None)]) + [
            ("deepspeed", int(z)) for z in args.zero.split(",") if z
        ]
        for engine, zero in runs:
            key = f"train-{name}-{'plain' if engine == 'plain' else f'z{zero}'}"
            spec = dict(
                base,
                job="train",
                model=path,
                engine=engine,
                zero=zero or 0,
                profile=args.profile,
                evaluate=0 if "eval" in skip else 8,
                export=(name == "a" and engine == "deepspeed" and "export" not in skip),
            )
            res = run_job(key, spec, root)
            results[key] = res
            table.append(
                {
                    "key": key,
                    "model": label,
                    "params": models[name]["params"],
                    "path": "plain PyTorch bf16" if engine == "plain" else f"DeepSpeed ZeRO-{zero}",
                    "res": res,
                    "model_id": name,
                }
            )
            save(table)

    # ---- KD: student (a)-sized, frozen assistant (a)
    if need_student and "a" in models and "a_student" in models:
        for src, tag in [(None, "stock")] + ([(patched, "patched")] if patched else []):
            key = f"kd-{tag}"
            spec = dict(
                base,
                job="train",
                model=models["a_student"]["path"],
                engine="deepspeed",
                zero=2,
                role="student",
                teacher=models["a"]["path"],
                steps=min(steps, 6),
                warmup=1,
                evaluate=0,
                export=False,
            )
            res = run_job(key, spec, root, src=src)
            results[key] = res
            table.append(
                {
                    "key": key,
                    "model": f"(a) student + KD ({tag} code)",
                    "params": models["a"]["params"],
                    "path": "DeepSpeed ZeRO-2",
                    "res": res,
                    "model_id": "kd",
                }
            )

    # ---- Qwen2.5-VL
    if "qwen" not in skip and results.get("build-qwen", {}).get("ok"):
        try:
            import torchvision  # noqa: F401

            direct = False
        except ImportError:
            direct = True  # no torchvision here: load_model refuses Qwen2.5-VL; check the rest
        for src, tag in [(None, "stock")] + ([(patched, "patched")] if patched else []):
            key = f"qwen-{tag}"
            spec = dict(
                base,
                job="qwen",
                model=results["build-qwen"]["path"],
                direct_processor=direct,
                train_steps=0 if direct else 4,
                batch_size=2,
            )
            results[key] = run_job(key, spec, root, src=src)

    report = save(table)
    print("\n" + report, flush=True)


def render_report(device_line, ver, base, table, results, patched, seconds, args) -> str:
    lines = [
        "## GPU check",
        "",
        device_line,
        "",
        f"{base['steps']} optimizer steps per run ({base['warmup']} warm-up steps untimed), batch {base['batch_size']} "
        f"(each sample = a chain stream + a label stream), lr {base['lr']}, {base['precision']}, MulCoT assistant loss "
        f"on synthetic msc rows (gold_chain). Total wall time {seconds:.0f}s.",
        "",
        "| model | params | path / ZeRO stage | samples/s | vs plain | step s (of it: collate on CPU) | peak GPU mem GB (alloc / reserved) | loss first -> last | dev eval / export |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    plain = {
        row["model_id"]: row["res"].get("samples_per_s")
        for row in table
        if row["path"].startswith("plain") and row["res"].get("ok")
    }
    for row in table:
        res = row["res"]
        if not res.get("ok"):
            mem = res.get("peak_alloc_gb")
            mem_s = f"{mem:.1f} at failure" if isinstance(mem, float) and not math.isnan(mem) else "-"
            lines.append(
                f"| {row['model']} | {fmt_params(row['params'])} | {row['path']} | FAILED | - | - | {mem_s} | "
                f"`{_short(res.get('error', ''))}` | - |"
            )
            continue
        sps = res["samples_per_s"]
        base_sps = plain.get(row["model_id"])
        ratio = f"{sps / base_sps:.2f}x" if base_sps else "-"
        extra = []
        if "dev" in res:
            extra.append(f"dev acc {res['dev']['dev_accuracy']:.2f} on {res['dev']['count']}")
        if "dev_error" in res:
            extra.append(f"dev eval FAILED `{_short(res['dev_error'])}`")
        if "export" in res:
            e = res["export"]
            extra.append(f"export ok ({fmt_params(e['params_loaded'])} loaded back, max diff {e['max_abs_diff']:.2g})")
        if "export_error" in res:
            extra.append(f"export FAILED `{_short(res['export_error'])}`")
        if "kl_l" in (res.get("parts_last") or {}):
            p = res["parts_last"]
            extra.append(
                f"last step ce_l {p['ce_l']:.3f}, kl_l {p['kl_l']:.3f}, ce_c {p.get('ce_c', float('nan')):.3f}, kl_c {p.get('kl_c', float('nan')):.3f}"
            )
        lines.append(
            f"| {row['model']} | {fmt_params(row['params'])} | {row['path']} | {sps:.1f} | {ratio} | "
            f"{res['step_s']:.3f} ({res.get('collate_step_s', float('nan')):.3f}) | "
            f"{res['peak_alloc_gb']:.1f} / {res['peak_reserved_gb']:.1f} | {fmt_loss(res)} | {'; '.join(extra) or '-'} |"
        )

    for tag in ("stock", "patched"):
        res = results.get(f"qwen-{tag}")
        if not res:
            continue
        lines += [
            "",
            f"### Qwen2.5-VL (tiny, {results['build-qwen'].get('params', 0) / 1e6:.1f}M params), {tag} code",
            "",
        ]
        if not res.get("ok"):
            lines.append(f"job failed: `{_short(res.get('error', ''))}`")
            continue
        lines += ["| check | result |", "| --- | --- |"]
        for name, c in res["checks"].items():
            if c["ok"]:
                detail = {k: v for k, v in c.items() if k != "ok"}
                lines.append(f"| {name} | ok: `{json.dumps(detail, default=str)[:600]}` |")
            else:
                lines.append(f"| {name} | FAILED: `{_short(c['error'])}` |")
    for row in table:
        prof = row["res"].get("profile")
        if prof:
            lines += [
                "",
                f"### Profile: {row['model']}, {row['path']} ({prof['steps']} steps)",
                "",
                f"wall {prof['wall_s']:.3f}s, GPU kernels busy {prof['gpu_kernel_s']:.3f}s "
                f"({100 * prof['gpu_kernel_s'] / prof['wall_s']:.0f}% of wall)",
                "",
                "```",
                prof["top_gpu"].strip(),
                "```",
                "",
                "```",
                prof["top_cpu"].strip(),
                "```",
            ]
    failures = [(k, r) for k, r in results.items() if not r.get("ok")]
    failures += [
        (f"{k}/{n}", c)
        for k, r in results.items()
        if r.get("ok") and "checks" in r
        for n, c in r["checks"].items()
        if not c["ok"]
    ]
    failures += [(f"{k} (dev eval)", {"error": r["dev_error"]}) for k, r in results.items() if r.get("dev_error")]
    failures += [(f"{k} (export)", {"error": r["export_error"]}) for k, r in results.items() if r.get("export_error")]
    if failures:
        lines += ["", "### Failures (traceback tails)", ""]
        for key, r in failures:
            lines += [f"**{key}**", "", "```", r.get("error", "").strip()[-1500:], "```", ""]
    if not patched:
        lines += ["", "(proposed fixes not applied: run without --no-proposed-fixes, or the diff is already merged)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
