"""Where outputs go, which Ray cluster runs them, where MLflow records them."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from sentiray.config.base import Section


class StorageConfig(Section):
    root: str = Field("runs", description="Base URI for outputs given as relative names (local path or s3://).")


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster address; None starts (or joins, via RAY_ADDRESS) a local one."
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="Logical CPUs of a local cluster started by sentiray (default: the machine's cores, at least 4).",
    )
    namespace: str | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class TrackingConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or ./runs/mlflow."
    )
    experiment: str = "sentiray"
    run_name: str | None = None
    parent_run_id: str | None = Field(None, description="Nest this stage's run under an existing run (pipelines).")
    tags: dict[str, str] = Field(default_factory=dict)
