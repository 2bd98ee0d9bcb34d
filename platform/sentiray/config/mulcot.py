"""``mulcot:``: MulCoT-RD's assistant and student (method.md, section 1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sentiray.config.base import Section


class MulCoTConfig(Section):
    role: Literal["assistant", "student"] = Field(
        "assistant", description="assistant: multi-task fine-tuning; student: distilled from distill.teacher_path."
    )
    chain_column: str = Field("rationale", description="Column holding the reasoning chain to learn (teacher output).")
    w_chain: float = Field(1.0, ge=0, description="w_c: weight of the chain stream loss.")
    w_label: float = Field(1.0, ge=0, description="w_l: weight of the label stream loss.")
    max_length: int = Field(
        512, gt=0, description="Longest sequence (prompt + target); longer rows are skipped, counted."
    )
    image_size: int = Field(
        280, ge=8, description="Images are resized to this square side before the processor (paper: 280)."
    )
    prompts_dir: str | None = Field(None, description="Folder of prompt templates overriding the built-in ones.")
    # Evaluation (sentiray evaluate): the label is always scored; chains are optional.
    generate_chains: bool = Field(
        True, description="evaluate: also generate reasoning chains for the reasoning metrics."
    )
    chain_max_new_tokens: int = Field(256, gt=0, description="evaluate: length limit of a generated chain.")
    reference_column: str | None = Field(
        None,
        description="evaluate: reference chains for BLEU/ROUGE; default 'rationale' when present, else 'gold_chain'.",
    )
