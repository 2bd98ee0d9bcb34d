"""``models:``: the tiny models the demo and the tests build themselves (random weights, real
Hugging Face formats), so that every path runs without a download."""

from __future__ import annotations

from pydantic import Field

from sentiray.config.base import Section


class TinyModelsConfig(Section):
    output: str = Field("models", description="Folder the models go to (relative: under storage.root).")
    seed: int = Field(0, description="Seed of the VLM, causal LM, encoder and vision tower.")
    student_seed: int = Field(7, description="Seed of the student's starting VLM (differs from the assistant's).")
