"""``mse_adapter:``: the MSE-Adapter family's own settings (method.md, section 3).

Sizes default to the paper's (width 256, LSTM 64 / 32, n = 4 pseudo tokens, k = 8, 32, 16, no
layer norm); the feature dimensions come from the data. The optimiser settings of the paper
live in ``train:`` (``train.eps: 1.0e-4``, ``train.scheduler: cosine``,
``train.warmup_ratio: 0.1``, ``train.early_stopping_patience: 10`` or 8): see
jobs/train_mse.yaml.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sentiray.config.base import Section


class MseAdapterConfig(Section):
    width: int = Field(
        256, gt=0, description="Adapter width: audio/video encodings, text projection, fusion (paper: 256)."
    )
    audio_hidden: int = Field(64, gt=0, description="Audio LSTM hidden size (paper: 64 MOSEI / SIMS-V2 / MELD).")
    vision_hidden: int = Field(32, gt=0, description="Video LSTM hidden size (paper: 32 MOSEI and MELD, 64 SIMS-V2).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each LSTM (paper's configs: 0).")
    pseudo_tokens: int = Field(4, gt=0, description="n pseudo tokens fed to the LLM (paper: 4; 2 for Qwen on MELD).")
    scales: list[int] = Field(
        [8, 32, 16], min_length=1, description="Multi-Scale Fusion: one GELU MLP width -> d/k -> width per k."
    )
    layer_norm: bool = Field(
        False, description="Layer norm after the Text-Guide-Mixer (the paper's text has one, its code none)."
    )
    # Ablations (the paper's): each switch removes one part, the rest trains as usual.
    text_guide: bool = Field(True, description="Ablation: false mixes f = a + v (no text guidance).")
    multi_scale: bool = Field(True, description="Ablation: false projects f straight to d (no multi-scale MLPs).")
    text_only: bool = Field(False, description="Ablation: pseudo tokens from the text vector alone (no audio/video).")
    audio_dim: int | None = Field(None, gt=0, description="Audio feature size; default: read from the training data.")
    vision_dim: int | None = Field(None, gt=0, description="Video feature size; default: read from the training data.")
    # The sequence the LLM reads: [prefix; pseudo tokens; text; suffix; task prompt] answer.
    text_length: int | None = Field(
        None,
        gt=0,
        description="Text tokens per row, padded or cut (default per data set: MOSI/MOSEI/SIMS/SIMS-V2 50, "
        "MELD 65, CHERMA 78, synthetic 24).",
    )
    prefix: str = Field("<Multimodal>", description="Text before the pseudo tokens.")
    suffix: str = Field("</Multimodal>", description="Text after the row's text, before the task prompt.")
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Task prompt per data set (mosei, simsv2, meld, synthetic, ...) or per task (msa, erc); "
        "unset: the paper's prompts, the ERC one listing the label set with indices.",
    )
    scorer: Literal["mosi", "mosei", "sims", "simsv2", "meld", "cherma"] | None = Field(
        None,
        description="Whose metric arithmetic scores this data (default: the data set's own; synthetic msa: "
        "mosi, synthetic erc: meld).",
    )
    max_new_tokens: int | None = Field(None, gt=0, description="Greedy answer length (default: 4 regression, 2 ERC).")
    erc_decode: Literal["likelihood", "generate"] = Field(
        "likelihood",
        description="ERC label: the most likely class index (one forward pass, gives probabilities) or "
        "the generated answer parsed (the paper's; unparseable counts as class 0).",
    )

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError(f"every k must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _ablations(self) -> MseAdapterConfig:
        if self.text_only and not self.text_guide:
            raise ValueError(
                "text_only builds the pseudo tokens from the text alone: text_guide=false has no effect there"
            )
        return self
