"""The job: one YAML per stage, carrying the sections that stage needs."""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from sentiray.config.base import Section, Stage
from sentiray.config.data import DataConfig
from sentiray.config.evaluate import EvaluateConfig
from sentiray.config.lrsa import LrsaConfig
from sentiray.config.model import ModelConfig
from sentiray.config.mse_adapter import MseAdapterConfig
from sentiray.config.mulcot import MulCoTConfig
from sentiray.config.runtime import RayConfig, StorageConfig, TrackingConfig
from sentiray.config.serve import ServeConfig
from sentiray.config.teacher import AugmentConfig, TeacherConfig
from sentiray.config.tiny import TinyModelsConfig
from sentiray.config.train import DistillConfig, TrainConfig
from sentiray.config.tune import TuneConfig

# Which sections each stage needs. A stage's module reads only these.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "models": ("models",),
    "data": ("data",),
    "rationales": ("data", "teacher"),
    "train": ("data", "model", "train"),
    "augment": ("data", "model"),
    "evaluate": ("data", "model"),
    "tune": ("data", "model", "train", "tune"),
    "serve": ("serve",),
}


class JobConfig(Section):
    stage: Stage
    name: str | None = Field(None, description="Human name of this job (MLflow run name, submission id).")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    models: TinyModelsConfig | None = None
    data: DataConfig | None = None
    model: ModelConfig | None = None
    teacher: TeacherConfig | None = None
    train: TrainConfig | None = None
    distill: DistillConfig | None = None
    augment: AugmentConfig | None = None
    evaluate: EvaluateConfig | None = None
    tune: TuneConfig | None = None
    serve: ServeConfig | None = None
    # The families' own sections (the family named by train.family reads its own).
    mulcot: MulCoTConfig | None = None
    mse_adapter: MseAdapterConfig | None = None
    lrsa: LrsaConfig | None = None

    @model_validator(mode="after")
    def _sections_for_stage(self) -> JobConfig:
        missing = [s for s in STAGE_SECTIONS[self.stage] if getattr(self, s) is None]
        if missing:
            raise ValueError(f"stage {self.stage!r} needs the section(s) {missing}")
        return self

    def resolve(self, uri: str) -> str:
        """A URI from the config: absolute paths and s3:// stay, relative names go under storage.root."""
        from sentiray.data import storage

        if storage.is_remote(uri) or uri.startswith("file://") or os.path.isabs(uri):
            return uri
        return storage.join(self.storage.root, uri)

    def section(self, name: str):
        """A family's own section, with its defaults when the YAML leaves it out."""
        value = getattr(self, name, None)
        if value is not None:
            return value
        field = type(self).model_fields.get(name)
        if field is None:
            raise KeyError(f"no config section {name!r}")
        return _section_type(field.annotation)()


def _section_type(annotation):
    """``X | None`` -> ``X``."""
    from typing import get_args

    return next(a for a in get_args(annotation) if a is not type(None))
