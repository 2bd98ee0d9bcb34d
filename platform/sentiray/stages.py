"""The registry of pipeline stages: a stage name -> the function that runs it.

A stage function takes the validated :class:`~sentiray.config.JobConfig` and returns a
small summary dict. Modules are imported lazily so that ``sentiray --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sentiray.config import ConfigError, JobConfig

STAGES: dict[str, str] = {
    "models": "sentiray.models.tiny:run",
    "data": "sentiray.data.prepare:run",
    "rationales": "sentiray.teacher.pipeline:run",
    "serve": "sentiray.serving.app:run",
    "train": "sentiray.train.launcher:run",
    "evaluate": "sentiray.evaluate.stage:run",
    "augment": "sentiray.teacher.augment:run",
    "tune": "sentiray.sweep.driver:run",
}


def stage_function(stage: str) -> Callable[[JobConfig], dict[str, Any]]:
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is not available in this version of sentiray; available: {sorted(STAGES)}")
    module, func = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(cfg: JobConfig) -> dict[str, Any]:
    return stage_function(cfg.stage)(cfg)
