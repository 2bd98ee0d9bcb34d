"""``serve:`` and the args of a Serve application: the endpoint, its limits, its replicas."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sentiray.config.base import Section


class ServeLimits(Section):
    """What a request may carry. Each violation is answered with a 4xx naming the limit."""

    max_body_bytes: int = Field(8 * 2**20, gt=0, description="Largest request body (413 above).")
    max_text_chars: int = Field(4000, gt=0, description="Longest text (a post, or a chat message's text parts).")
    max_aspect_chars: int = Field(200, gt=0)
    max_image_bytes: int = Field(4 * 2**20, gt=0, description="Largest image after base64 decoding (413 above).")
    max_image_side: int = Field(4096, gt=0, description="Largest image width or height in pixels.")
    min_image_side: int = Field(8, gt=0, description="Smallest image width or height in pixels.")
    max_image_pixels: int = Field(16 * 2**20, gt=0, description="Most pixels (width x height) an image may have.")
    max_image_aspect_ratio: float = Field(
        200, ge=1, description="Longest side / shortest side; Qwen2-VL's processor (smart_resize) refuses above 200."
    )
    image_formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "BMP"], description="Accepted image formats (PIL names)."
    )
    max_feature_frames: int = Field(2000, gt=0, description="Longest audio/vision feature sequence (T).")
    max_feature_dim: int = Field(2048, gt=0, description="Widest audio/vision feature vector (D).")
    max_new_tokens: int = Field(512, gt=0, description="Largest max_tokens a request may ask for.")
    max_messages: int = Field(64, gt=0, description="Most messages in one chat request.")

    @field_validator("image_formats")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [f.upper() for f in v]

    @model_validator(mode="after")
    def _sides(self) -> ServeLimits:
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"min_image_side ({self.min_image_side}) > max_image_side ({self.max_image_side})")
        return self


# Args of the MulCoT-only server of before families: where each went (an old YAML fails saying so).
MOVED_ARGS = {
    "task": "read from the model's manifest (sentiray.json): remove it",
    "labels": "read from the model's manifest (sentiray.json): remove it",
    "prompts_dir": "read from the model's manifest (sentiray.json): remove it",
    "chain_max_new_tokens": "endpoint.chain_max_new_tokens (the MulCoT endpoint's own settings)",
}
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")


class ServeAppConfig(Section):
    """The ``args`` of a sentiray Serve application (``sentiray.serving.app:build_app``).

    One deployment serves HTTP and runs the model: the routes are the platform's (probes,
    OpenAI-compatible chat when the family writes text) plus the family's own (``Family.
    endpoints``, e.g. MulCoT's ``/v1/sentiment``). The replica fields (``min_replicas`` ...
    ``num_gpus``) are the defaults build_app gives the deployment; a ``deployments:`` entry
    in a Serve YAML overrides autoscaling and actor options, as Ray Serve does for every
    option set in code. ``model``, ``max_batch_size`` and ``batch_wait_timeout_s`` are also
    the defaults of the deployment's ``user_config``, which swaps them on running replicas
    without a restart.
    """

    model: str | None = Field(
        None, description="models:/name/version, models:/name@alias, runs:/..., a local folder or an s3:// prefix."
    )
    models: dict[str, str] | None = Field(
        None,
        description="Several models per replica (multiplexing), by id: {id: source}. A request names its id in the "
        "serve_multiplexed_model_id header or in its body's `model` field.",
    )
    max_models_per_replica: int = Field(
        4, gt=0, description="Multiplexing: models a replica keeps loaded (LRU beyond)."
    )
    family: str | None = Field(
        None,
        description="Family whose endpoints are mounted; default: the one the model's manifest names "
        "(`sentiray serve` reads it on the driver before deploying).",
    )
    kind: Literal["vlm", "causal_lm"] | None = Field(
        None,
        description="Override of the manifest's model kind (a plain HF folder without sentiray.json loads as vlm).",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="Override of the manifest's dtype, for families whose loader reads it."
    )
    served_model_name: str = Field("sentiray-student", min_length=1, description="The model id of the OpenAI routes.")
    endpoint: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the family's endpoint (MulCoT: chain_max_new_tokens), "
        "checked against the family's schema.",
    )
    chat_max_new_tokens: int = Field(256, gt=0, description="Default max_tokens of a chat completion.")
    max_concurrent_generations: int = Field(
        1,
        gt=0,
        description="Text generations (chats, streams, chains) a replica computes at once, beside label "
        "scoring; more wait their turn. Scoring never waits behind them.",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow store for models:/ and runs:/ sources; default: the replica's MLFLOW_TRACKING_URI."
    )
    api_key_env: str | None = Field(None, description="Environment variable holding the API key; unset: no key needed.")
    access_log: bool = Field(
        True, description="A log line per request in the replica's log (Serve's access log); off saves CPU per request."
    )
    # Dynamic batching.
    max_batch_size: int = Field(8, gt=0, description="Most rows computed in one predict call.")
    batch_wait_timeout_s: float = Field(
        0.01,
        ge=0,
        description="How long a batch may wait for requests already inside the replica (never when none is arriving).",
    )
    # Replicas.
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, gt=0)
    target_ongoing_requests: float = Field(2, gt=0)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(120, ge=0)
    max_ongoing_requests: int = Field(16, gt=0, description="Requests a replica works on at once (its batches).")
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="Requests a replica holds waiting beyond max_ongoing_requests; more: 503 with Retry-After. -1: no limit.",
    )
    retry_after_s: float = Field(1, ge=0, description="Retry-After (seconds) sent with a 503 on overload.")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    limits: ServeLimits = Field(default_factory=ServeLimits)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            found = [k for k in MOVED_ARGS if k in raw]
            if found:
                raise ValueError("; ".join(f"{k}: moved, now {MOVED_ARGS[k]}" for k in found))
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ServeAppConfig:
        if self.model is None and not self.models:
            raise ValueError("model: Field required (or models: {id: source, ...} to multiplex several)")
        if self.model is not None and self.models:
            raise ValueError("model and models: give one model, or several models by id, not both")
        for model_id, source in (self.models or {}).items():
            if not _MODEL_ID.match(model_id):
                raise ValueError(f"models: id {model_id!r} must start with a letter or digit and hold no spaces")
            if not source:
                raise ValueError(f"models.{model_id}: empty source")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size ({self.max_batch_size}): "
                "a replica would never hold enough requests to fill a batch"
            )
        if self.chat_max_new_tokens > self.limits.max_new_tokens:
            raise ValueError(
                f"chat_max_new_tokens ({self.chat_max_new_tokens}) > limits.max_new_tokens ({self.limits.max_new_tokens})"
            )
        return self

    @property
    def sources(self) -> dict[str, str]:
        """Model id -> source: the multiplexed ones, or the one model under served_model_name."""
        return dict(self.models) if self.models else {self.served_model_name: self.model}

    @property
    def capacity(self) -> int | None:
        """Requests one replica holds before answering 503 (None: no limit)."""
        if self.max_queued_requests < 0:
            return None
        return self.max_ongoing_requests + self.max_queued_requests


class ServeConfig(ServeAppConfig):
    """``serve:`` of a job YAML: the application plus where ``sentiray run`` starts it."""

    app_name: str = Field("student", min_length=1)
    route_prefix: str = "/"
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    blocking: bool = Field(True, description="Keep running until interrupted (False: return once the app is up).")
