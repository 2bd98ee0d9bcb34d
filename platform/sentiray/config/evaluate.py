"""``evaluate:``: score a trained model on a split (what is predicted is the family's)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sentiray.config.base import Section, moved_fields

MOVED_FROM_EVALUATE = {
    "generate_chains": "mulcot.generate_chains",
    "max_new_tokens": "mulcot.chain_max_new_tokens",
    "reference_column": "mulcot.reference_column",
}


class EvaluateConfig(Section):
    split: Literal["train", "dev", "test"] = "test"
    output: str = Field("reports/evaluate", description="URI for report.json, report.md, predictions.jsonl and plots.")
    batch_size: int = Field(16, gt=0, description="Rows per prediction batch.")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N rows of the split.")
    register_name: str | None = Field(
        None, description="Also record the metrics on this registered model's latest version."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw):
        moved_fields(raw, "evaluate", MOVED_FROM_EVALUATE)
        return raw
