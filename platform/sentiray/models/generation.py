"""Batched generation and label scoring with any of our HF models.

Shared by the teacher's ``hf`` backend, augmentation, evaluation and serving, so that a
chain is produced the same way everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from sentiray.models.inputs import IGNORE, PromptEncoder
from sentiray.prompts import label_target


@dataclass
class Generated:
    text: str
    new_tokens: int
    prompt_tokens: int = 0


class Generator:
    """Wraps a loaded model and its processor for generation and label scoring."""

    def __init__(self, model: Any, processor: Any, max_new_tokens: int = 512, temperature: float = 0.0):
        self.model = model.eval()
        self.encoder = PromptEncoder(processor)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = next(self.model.parameters()).dtype
        out = {}
        for k, v in batch.items():
            v = v.to(self.device)
            out[k] = v.to(dtype) if k == "pixel_values" else v
        return out

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Image.Image | None],
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        **generate_kwargs: Any,
    ) -> list[Generated]:
        """Greedy (temperature 0) or sampled answers, one per prompt, in order.

        ``generate_kwargs`` go to Hugging Face's ``generate`` (e.g. ``streamer``,
        ``stopping_criteria``)."""
        items = [self.encoder.encode_prompt(p, img) for p, img in zip(prompts, images)]
        batch = self.encoder.collate(items, left_pad=True)
        batch.pop("labels")
        temperature = self.temperature if temperature is None else temperature
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens or self.max_new_tokens,
            "pad_token_id": self.encoder.pad_id,
            "eos_token_id": self.encoder.eos_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**self._to_device(batch), **kwargs, **generate_kwargs)
        new = out[:, batch["input_ids"].shape[1] :].cpu()
        results = []
        for item, row in zip(items, new):
            ids = row.tolist()
            if self.encoder.eos_id in ids:
                ids = ids[: ids.index(self.encoder.eos_id)]
            ids = [t for t in ids if t != self.encoder.pad_id]
            text = self.encoder.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results.append(Generated(text=text, new_tokens=len(ids), prompt_tokens=len(item.input_ids)))
        return results

    @torch.inference_mode()
    def label_logprobs(
        self, prompts: Sequence[str], images: Sequence[Image.Image | None], labels: Sequence[str]
    ) -> torch.Tensor:
        """(n_prompts, n_labels) log-probabilities of answering ``"Prediction": "<label>"``.

        Scoring the fixed answers is exact and costs one forward pass per (prompt, label),
        far less than generating.
        """
        items = []
        for prompt, image in zip(prompts, images):
            base = self.encoder.encode_prompt(prompt, image)
            for label in labels:
                target = self.encoder.target_ids(label_target(label), add_eos=False)
                items.append(dataclasses.replace(base, input_ids=base.input_ids + target))
        batch = self._to_device(self.encoder.collate(items))
        labels_t = batch.pop("labels")
        logits = self.model(**batch).logits[:, :-1].float()
        targets = labels_t[:, 1:]
        logp = torch.log_softmax(logits, dim=-1)
        mask = targets != IGNORE
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        return picked.sum(-1).view(len(prompts), len(labels)).cpu()
