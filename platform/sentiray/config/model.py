"""``model:``: a Hugging Face checkpoint to load, and LoRA on it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sentiray.config.base import Section


class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_on_save: bool = Field(True, description="Save the merged model (True) or the adapter alone (False).")


class ModelConfig(Section):
    path: str = Field(..., description="HF checkpoint: a local folder or an s3:// prefix.")
    kind: Literal["vlm", "causal_lm", "encoder"] = "vlm"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
