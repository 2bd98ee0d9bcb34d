"""``data:``: which data set to read or generate, and where the canonical copy goes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sentiray.config.base import DataFormat, Section, Task


class DataConfig(Section):
    format: DataFormat = "synthetic"
    input: str | None = Field(None, description="Folder (or file) of the public data set; not used by 'synthetic'.")
    output: str = Field(
        "data/synthetic", description="URI of the canonical data set to write (relative: under storage.root)."
    )
    task: Task | None = Field(None, description="Task; implied by the format except for 'synthetic' (default msc).")
    size: int = Field(600, gt=0, description="Synthetic: total samples over all splits.")
    seed: int = 0
    split_ratios: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/dev/test for formats without splits."
    )
    image_mode: Literal["bytes", "uri"] = Field("bytes", description="Store images inside the Parquet rows or as URIs.")
    image_size: int = Field(64, ge=8, le=1024, description="Synthetic: side of the drawn images in pixels.")
    features: str | None = Field(None, description="MELD: the pickle of audio/video features per utterance.")
    shard_rows: int = Field(2000, gt=0)
    overwrite: bool = Field(False, description="Rewrite an output that is already complete.")

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative numbers summing to 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _input_needed(self) -> DataConfig:
        if self.format not in ("synthetic",) and not self.input:
            raise ValueError(f"format {self.format!r} reads a data set: set data.input to its folder")
        return self
