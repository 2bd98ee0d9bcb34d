"""Config: pydantic schemas per concern, YAML loading and ``a.b=c`` overrides.

A job YAML names its ``stage`` and carries the sections that stage needs. It is validated
once on the driver, before Ray starts, and shipped to workers as a plain dict
(``cfg.model_dump()``), which each worker validates again.

The schemas are the documentation of every knob: read them to learn what a YAML may say.
One module per concern:

=================  =============================================================
``base``           ``Section`` (unknown keys fail), ``ConfigError``, vocabularies
``runtime``        ``storage:``, ``ray:``, ``tracking:``
``data``           ``data:``
``model``          ``model:`` (and its ``lora:``)
``teacher``        ``teacher:``, ``augment:``
``tiny``           ``models:`` (the tiny models the demo builds)
``train``          ``train:`` (the shared loop), ``distill:``
``mulcot``         ``mulcot:`` (the MulCoT-RD family's own settings)
``mse_adapter``    ``mse_adapter:`` (the MSE-Adapter family's own settings)
``lrsa``           ``lrsa:`` (the LRSA family's own settings)
``evaluate``       ``evaluate:``
``tune``           ``tune:`` (and the search-space checks)
``serve``          ``serve:`` and a Serve application's args
``job``            the job: which stage, which sections
``loading``        YAML, overrides, validation, flattening for MLflow
=================  =============================================================
"""

from sentiray.config.base import ConfigError, DataFormat, Section, Stage, Task
from sentiray.config.data import DataConfig
from sentiray.config.evaluate import EvaluateConfig
from sentiray.config.job import STAGE_SECTIONS, JobConfig
from sentiray.config.loading import (
    apply_overrides,
    flatten,
    format_validation_error,
    load,
    load_raw,
    parse_overrides,
    to_yaml,
    validate,
)
from sentiray.config.lrsa import LrsaConfig
from sentiray.config.model import LoraConfig, ModelConfig
from sentiray.config.mse_adapter import MseAdapterConfig
from sentiray.config.mulcot import MulCoTConfig
from sentiray.config.runtime import RayConfig, StorageConfig, TrackingConfig
from sentiray.config.serve import ServeAppConfig, ServeConfig, ServeLimits
from sentiray.config.teacher import AugmentConfig, TeacherConfig
from sentiray.config.tiny import TinyModelsConfig
from sentiray.config.train import DistillConfig, GroupConfig, PlateauConfig, TrainConfig
from sentiray.config.tune import TuneConfig

__all__ = [
    "STAGE_SECTIONS",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DataFormat",
    "DistillConfig",
    "EvaluateConfig",
    "GroupConfig",
    "JobConfig",
    "LoraConfig",
    "LrsaConfig",
    "ModelConfig",
    "MseAdapterConfig",
    "MulCoTConfig",
    "PlateauConfig",
    "RayConfig",
    "Section",
    "ServeAppConfig",
    "ServeConfig",
    "ServeLimits",
    "Stage",
    "StorageConfig",
    "Task",
    "TeacherConfig",
    "TrackingConfig",
    "TinyModelsConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "flatten",
    "format_validation_error",
    "load",
    "load_raw",
    "parse_overrides",
    "to_yaml",
    "validate",
]
