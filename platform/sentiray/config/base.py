"""What every config section shares: strict validation, the error type, the vocabularies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Task = Literal["msc", "masc", "mabsa", "msa", "erc"]
DataFormat = Literal[
    "synthetic",
    "canonical",
    "twitter2015",
    "twitter2017",
    "mabsa_json",
    "mvsa_single",
    "mvsa_multiple",
    "mosi",
    "mosei",
    "sims",
    "simsv2",
    "meld",
]
Stage = Literal["models", "data", "rationales", "train", "augment", "evaluate", "tune", "serve"]


class ConfigError(ValueError):
    """A config is wrong; the message names each field and why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def moved_fields(raw: object, section: str, moved: dict[str, str]) -> None:
    """Raise naming the new place of each field that moved out of ``section``.

    Called by a section's ``mode="before"`` validator, so an old YAML fails with the fix
    instead of "unknown key"."""
    if not isinstance(raw, dict):
        return
    found = [k for k in moved if k in raw]
    if found:
        where = "; ".join(f"{section}.{k} is now {moved[k]}" for k in found)
        raise ValueError(f"moved field(s): {where} (move them in the YAML or the override)")
