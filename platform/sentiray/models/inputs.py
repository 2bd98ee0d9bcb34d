"""Model inputs from prompts: chat formatting, image tokens, padding.

One place that turns ``(prompt text, optional image[, target text])`` into tensors for any
of our model kinds, used by training (prompt + target, loss on the target only),
generation (left-padded prompts) and label scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sentiray.models.loading import tokenizer_of
from sentiray.prompts import messages

IGNORE = -100  # the label of a token that takes no loss (prompt, padding): torch and HF convention


@dataclass
class Encoded:
    """One sequence: token ids, the number of leading prompt tokens, optional pixels.

    ``image_extras``: the processor's other per-image outputs (Qwen2-VL's ``image_grid_thw``),
    concatenated over a batch like the pixels. ``token_extras``: its per-token outputs over
    the prompt (Qwen2-VL's ``mm_token_type_ids``, which its 3D rotary positions need),
    0 on target and padding tokens.
    """

    input_ids: list[int]
    prompt_len: int
    pixel_values: torch.Tensor | None = None  # LLaVA: (1, C, H, W); Qwen2-VL: (patches, dim)
    image_extras: dict[str, torch.Tensor] = field(default_factory=dict)
    token_extras: dict[str, list[int]] = field(default_factory=dict)


class PromptEncoder:
    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        # A processor with an image processor takes images; a bare tokenizer does not.
        self.takes_images = hasattr(processor, "image_processor")
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    def chat_text(self, prompt: str, with_image: bool) -> str:
        """The prompt in the model's chat format, ending where the answer starts."""
        return self.tokenizer.apply_chat_template(
            messages(prompt, with_image and self.takes_images), tokenize=False, add_generation_prompt=True
        )

    def encode_prompt(self, prompt: str, image: Image.Image | None) -> Encoded:
        use_image = image is not None and self.takes_images
        text = self.chat_text(prompt, use_image)
        if use_image:
            out = self.processor(text=[text], images=[image], return_tensors="pt")
            ids = out["input_ids"]
            image_extras: dict[str, torch.Tensor] = {}
            token_extras: dict[str, list[int]] = {}
            for key, value in out.items():
                if key in ("input_ids", "attention_mask", "pixel_values") or not isinstance(value, torch.Tensor):
                    continue
                if value.shape == ids.shape:
                    token_extras[key] = value[0].tolist()
                else:
                    image_extras[key] = value
            return Encoded(ids[0].tolist(), int(ids.shape[1]), out["pixel_values"], image_extras, token_extras)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Encoded(list(ids), len(ids))

    def target_ids(self, target: str, add_eos: bool = True) -> list[int]:
        ids = list(self.tokenizer(target, add_special_tokens=False)["input_ids"])
        return ids + [self.eos_id] if add_eos and self.eos_id is not None else ids

    def encode(
        self, prompt: str, image: Image.Image | None, target: str, max_length: int | None = None, add_eos: bool = True
    ) -> Encoded:
        """Prompt + target; with ``max_length`` the target is cut (never the prompt's image
        tokens) to fit. Training passes None and skips rows that do not fit: a cut target
        teaches the model to stop mid-answer."""
        enc = self.encode_prompt(prompt, image)
        target_ids = self.target_ids(target, add_eos)
        if max_length is not None:
            target_ids = target_ids[: max(1, max_length - enc.prompt_len)]
        enc.input_ids = enc.input_ids + target_ids
        return enc

    def collate(self, items: Sequence[Encoded], left_pad: bool = False) -> dict[str, torch.Tensor]:
        """Pad a batch; ``labels`` are the target tokens (-100 on prompt and padding)."""
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for i, e in enumerate(items):
            n = len(e.input_ids)
            start = width - n if left_pad else 0
            ids[i, start : start + n] = torch.tensor(e.input_ids)
            mask[i, start : start + n] = 1
            labels[i, start + e.prompt_len : start + n] = torch.tensor(e.input_ids[e.prompt_len :], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for key in sorted({k for e in items for k in e.token_extras}):
            values = torch.zeros((len(items), width), dtype=torch.long)
            for i, e in enumerate(items):
                row = e.token_extras.get(key)
                if row:
                    start = width - len(e.input_ids) if left_pad else 0
                    values[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
            batch[key] = values
        pixels = [e.pixel_values for e in items if e.pixel_values is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels, dim=0)
            for key in sorted({k for e in items for k in e.image_extras}):
                batch[key] = torch.cat([e.image_extras[key] for e in items if e.pixel_values is not None], dim=0)
        return batch
