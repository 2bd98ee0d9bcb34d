"""MSE-Adapter (method.md, section 3): a small trainable plugin that feeds audio and video to a
frozen causal LLM as a few pseudo tokens.

Read from the paper's code (AZYoung233/MSE-Adapter, ``models/multiTask/CMCM.py``), every
size configurable (:class:`AdapterShape`):

1. audio / video: a one-layer LSTM over the real frames of each sequence (packed), its last
   hidden state, dropout, a linear map to the adapter width: ``a``, ``v`` (B, width);
2. Text-Guide-Mixer: ``t = W_t mean(X_t)`` (d -> width) and ``f = a * t + v * t``
   (Hadamard products), optionally layer-normed;
3. Multi-Scale Fusion: three GELU MLPs ``width -> d/k -> width`` (k = 8, 32, 16), their outputs
   combined by a learned weighted sum (three weights and a bias: the paper's 1x3
   convolution), projected ``width -> d``: ``h`` (B, d);
4. n pseudo tokens ``alpha_j * h + beta_j`` (scalars per token): (B, n, d).

At d = 4096 with MOSEI's features (audio 74 -> LSTM 64, video 35 -> LSTM 32, width 256, n = 4,
no layer norm) this is exactly 2,631,692 parameters, the paper's figure.

Ablations (the paper's): ``text_guide=False`` mixes ``f = a + v`` (no text projection),
``multi_scale=False`` projects ``f`` straight to d, ``text_only=True`` builds the pseudo
tokens from the text vector alone (no audio/video encoders), so the comparison measures
what the features add with the same trainable path.

:class:`MseAdapterModel` puts the adapter in front of a frozen backbone: the input
embeddings are the backbone's own for every token, with the placeholder positions replaced
by the pseudo tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass(frozen=True)
class AdapterShape:
    """Every size of an adapter. ``hidden_size`` is the LLM's d; feature dims come from the data."""

    hidden_size: int
    audio_dim: int
    vision_dim: int
    width: int = 256
    audio_hidden: int = 64
    vision_hidden: int = 32
    pseudo_tokens: int = 4
    scales: tuple[int, ...] = (8, 32, 16)
    layer_norm: bool = False
    dropout: float = 0.0
    text_guide: bool = True
    multi_scale: bool = True
    text_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(k) for k in self.scales))
        too_wide = [k for k in self.scales if self.hidden_size // k < 1]
        if self.multi_scale and too_wide:
            raise ValueError(
                f"mse_adapter.scales {list(too_wide)}: d/k must be at least 1, and the LLM's hidden "
                f"size d is {self.hidden_size}"
            )
        if not self.text_only and (self.audio_dim < 1 or self.vision_dim < 1):
            raise ValueError(f"feature dims must be positive (audio {self.audio_dim}, vision {self.vision_dim})")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scales"] = list(self.scales)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterShape:
        return cls(**values)


class SequenceEncoder(nn.Module):
    """One-layer LSTM over the real frames of each sequence -> last hidden state -> dropout -> width."""

    def __init__(self, in_dim: int, hidden: int, width: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, width)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packed: the LSTM stops at each sequence's last real frame, so padding never enters
        # the state. enforce_sorted=False returns the states in the batch's own order.
        packed = pack_padded_sequence(frames, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.linear(self.dropout(h_n[-1]))


class TextGuideMixer(nn.Module):
    """``f = a * t + v * t`` with ``t = W_t mean(X_t)``; ``guided=False``: ``f = a + v``."""

    def __init__(self, hidden_size: int, width: int, layer_norm: bool, guided: bool = True):
        super().__init__()
        self.text = nn.Linear(hidden_size, width) if guided else None
        self.norm = nn.LayerNorm(width) if layer_norm else None

    def forward(self, audio: torch.Tensor, vision: torch.Tensor, text_mean: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            mixed = audio + vision
        else:
            t = self.text(text_mean)
            mixed = audio * t + vision * t
        return self.norm(mixed) if self.norm is not None else mixed


class MultiScaleFusion(nn.Module):
    """Three GELU MLPs ``width -> d/k -> width``, a learned weighted sum, a projection to d."""

    def __init__(self, width: int, hidden_size: int, scales: tuple[int, ...]):
        super().__init__()
        self.scales = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden_size // k), nn.GELU(), nn.Linear(hidden_size // k, width))
            for k in scales
        )
        # The paper's 1x3 convolution over the stacked outputs: one weight per scale and a bias.
        self.mix = nn.Linear(len(scales), 1)
        self.project = nn.Linear(width, hidden_size)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([scale(fused) for scale in self.scales], dim=-1)  # (B, width, n_scales)
        return self.project(self.mix(stacked).squeeze(-1))


class MseAdapter(nn.Module):
    """(text embeddings, audio, video) -> n pseudo tokens in the LLM's embedding space."""

    def __init__(self, shape: AdapterShape):
        super().__init__()
        self.shape = shape
        s = shape
        if s.text_only:
            self.audio = self.vision = None
            self.text = nn.Linear(s.hidden_size, s.width)
            self.mixer = None
        else:
            self.audio = SequenceEncoder(s.audio_dim, s.audio_hidden, s.width, s.dropout)
            self.vision = SequenceEncoder(s.vision_dim, s.vision_hidden, s.width, s.dropout)
            self.text = None
            self.mixer = TextGuideMixer(s.hidden_size, s.width, s.layer_norm, guided=s.text_guide)
        self.fusion = (
            MultiScaleFusion(s.width, s.hidden_size, s.scales) if s.multi_scale else nn.Linear(s.width, s.hidden_size)
        )
        # token j = alpha_j * h + beta_j: a Linear(1, n) over each of h's d values, as in the paper.
        self.tokens = nn.Linear(1, s.pseudo_tokens)
        # beta_j starts at 0. Linear's default (uniform in [-1, 1] for one input) would shift every
        # one of token j's d values by the same constant, far beyond the scale of word embeddings
        # (std ~0.1 on the demo backbone, ~0.02 on real LLMs): the frozen LLM would read the pseudo
        # tokens as noise, and the adapter would spend its first steps, or get stuck, undoing it.
        nn.init.zeros_(self.tokens.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens.weight.dtype

    def forward(
        self,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_lengths: torch.Tensor | None = None,
        vision: torch.Tensor | None = None,
        vision_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = self.dtype
        text_mean = masked_mean(text_embeds.to(dtype), text_mask)
        if self.shape.text_only:
            fused = self.text(text_mean)
        else:
            a = self.audio(audio.to(dtype), audio_lengths)
            v = self.vision(vision.to(dtype), vision_lengths)
            fused = self.mixer(a, v, text_mean)
        h = self.fusion(fused)  # (B, d)
        return self.tokens(h.unsqueeze(-1)).transpose(1, 2)  # (B, n, d)


def masked_mean(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real text tokens. (The reference code averages over the padded length, pad
    embeddings included, which makes the text vector depend on how much padding a row got.)"""
    weights = mask.to(embeds.dtype).unsqueeze(-1)
    return (embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- in front of the LLM


@dataclass(frozen=True)
class Layout:
    """Where things sit in every sequence of one data set (all prompts have the same length).

    ``[bos?; prefix; n placeholders; text (text_length, left-padded); suffix; task prompt]``
    then the answer. Placeholder positions are replaced by the pseudo tokens; text padding is
    masked out of attention and of the text mean.
    """

    head: tuple[int, ...]  # bos (if the tokenizer has one) + the prefix's ids
    pseudo_tokens: int
    text_length: int
    tail: tuple[int, ...]  # the suffix's and the task prompt's ids
    pad_id: int
    eos_id: int | None

    @property
    def pseudo_start(self) -> int:
        return len(self.head)

    @property
    def text_start(self) -> int:
        return len(self.head) + self.pseudo_tokens

    @property
    def prompt_length(self) -> int:
        return len(self.head) + self.pseudo_tokens + self.text_length + len(self.tail)

    def prompt(self, text_ids: list[int]) -> tuple[list[int], list[int], bool]:
        """(ids, attention mask, whether the text was cut) of one row's prompt."""
        cut = len(text_ids) > self.text_length
        text_ids = list(text_ids[: self.text_length])
        pad = self.text_length - len(text_ids)
        ids = [*self.head, *[self.pad_id] * self.pseudo_tokens, *[self.pad_id] * pad, *text_ids, *self.tail]
        mask = [1] * (len(self.head) + self.pseudo_tokens) + [0] * pad + [1] * (len(text_ids) + len(self.tail))
        return ids, mask, cut


class MseAdapterModel(nn.Module):
    """A frozen causal LM with an :class:`MseAdapter` in front (what DeepSpeed wraps)."""

    def __init__(self, backbone: nn.Module, adapter: MseAdapter, layout: Layout):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.adapter = adapter
        self.layout = layout
        self._keeps_logits = "logits_to_keep" in inspect.signature(backbone.forward).parameters
        # The backbone is frozen and named by path in every export, so its tensors stay out of the
        # state dict and checkpoints hold the adapter alone. (DeepSpeed's exclude_frozen_parameters
        # goes by named_parameters(), which lists a tied weight once: it would keep lm_head.weight,
        # a copy of the whole input embedding, in every checkpoint.)
        self.register_state_dict_post_hook(_without_backbone)

    def train(self, mode: bool = True) -> MseAdapterModel:
        # The backbone stays in eval mode (no dropout) however the engine switches modes.
        super().train(mode)
        self.backbone.eval()
        return self

    def inputs_embeds(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone's embeddings of every token, pseudo tokens at the placeholders."""
        embeddings = self.backbone.get_input_embeddings()
        emb = embeddings(batch["input_ids"])
        start, text = self.layout.pseudo_start, self.layout.text_start
        text_embeds = emb[:, text : text + self.layout.text_length]
        pseudo = self.adapter(
            text_embeds,
            batch["text_mask"],
            batch.get("audio"),
            batch.get("audio_lengths"),
            batch.get("vision"),
            batch.get("vision_lengths"),
        )
        return torch.cat([emb[:, :start], pseudo.to(emb.dtype), emb[:, text:]], dim=1)

    def forward(self, batch: dict[str, torch.Tensor], logits_to_keep: int = 0) -> torch.Tensor:
        """Logits; ``logits_to_keep`` > 0: only those of the last positions (the answer's), which
        spares a (batch x length x vocabulary) tensor on a real LLM."""
        kwargs: dict[str, Any] = {}
        if logits_to_keep and self._keeps_logits:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.backbone(
            inputs_embeds=self.inputs_embeds(batch), attention_mask=batch["attention_mask"], use_cache=False, **kwargs
        )
        logits = out.logits
        return logits[:, -logits_to_keep:] if logits_to_keep else logits


def _without_backbone(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
        del state_dict[key]
