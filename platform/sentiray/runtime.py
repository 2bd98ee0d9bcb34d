"""Connecting to Ray, and what every Ray process must inherit from the driver."""

from __future__ import annotations

import os
from typing import Any

from sentiray.config import RayConfig

# Environment a stage's Ray workers need to reach the same services as the driver.
PASSTHROUGH_PREFIXES = ("AWS_", "MLFLOW_", "SENTIRAY_", "HF_")


def passthrough_env() -> dict[str, str]:
    """The driver's service settings (S3 endpoint and keys, MLflow, ...), for runtime_env."""
    return {k: v for k, v in os.environ.items() if k.startswith(PASSTHROUGH_PREFIXES)}


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Join the configured cluster (``ray.address`` or ``RAY_ADDRESS``) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    elif cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg.namespace:
        kwargs["namespace"] = cfg.namespace
    runtime_env = dict(cfg.runtime_env)
    env = {**passthrough_env(), **runtime_env.get("env_vars", {})}
    if env:
        runtime_env["env_vars"] = env
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    ray.init(**kwargs)
