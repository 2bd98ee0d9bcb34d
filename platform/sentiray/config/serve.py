"""``serve:`` and the args of a Serve application: the endpoint, its limits, its replicas."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sentiray.config.base import Section


class ServeLimits(Section):
    """What a request may carry. Each violation is answered with a 4xx naming the limit."""

    max_body_bytes: int = Field(8 * 2**20, gt=0, description="Largest request body (413 above).")
    max_text_chars: int = Field(4000, gt=0, description="Longest text (a post, or a chat message's text parts).")
    max_aspect_chars: int = Field(200, gt=0)
    max_image_bytes: int = Field(4 * 2**20, gt=0, description="Largest image after base64 decoding (413 above).")
    max_image_side: int = Field(4096, gt=0, description="Largest image width or height in pixels.")
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


class ServeAppConfig(Section):
    """The ``args`` of a sentiray Serve application (``sentiray.serving.app:build_app``).

    The replica fields (``min_replicas`` ... ``num_gpus``) are the defaults build_app gives
    the model deployment; a ``deployments:`` entry in a Serve YAML overrides any of them,
    as Ray Serve does for every option set in code. ``model``, ``max_batch_size`` and
    ``batch_wait_timeout_s`` are also the defaults of the deployment's ``user_config``,
    which swaps them on running replicas without a restart.
    """

    model: str = Field(..., description="models:/name/version, models:/name@alias, runs:/..., a local folder or an s3:// prefix.")
    kind: Literal["vlm", "causal_lm"] = Field("vlm", description="vlm takes images; causal_lm is text only.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    served_model_name: str = Field("sentiray-student", min_length=1, description="The model id of the OpenAI routes.")
    task: Literal["msc", "masc"] = Field("msc", description="Prompt variant for requests without an aspect (with one: masc).")
    labels: list[str] = Field(default_factory=lambda: ["positive", "neutral", "negative"], min_length=2)
    prompts_dir: str | None = Field(None, description="Folder of prompt templates overriding the built-in ones.")
    chain_max_new_tokens: int = Field(256, gt=0, description="Default length of a reasoning chain (requests may ask less or more).")
    chat_max_new_tokens: int = Field(256, gt=0, description="Default max_tokens of a chat completion.")
    tracking_uri: str | None = Field(None, description="MLflow store for models:/ and runs:/ sources; default: the replica's MLFLOW_TRACKING_URI.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key; unset: no key needed.")
    # Dynamic batching (@serve.batch).
    max_batch_size: int = Field(8, gt=0)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    # Replicas of the model deployment.
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, gt=0)
    target_ongoing_requests: float = Field(2, gt=0)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(120, ge=0)
    max_ongoing_requests: int = Field(16, gt=0, description="Requests a replica holds at once (its batch queue included).")
    max_queued_requests: int = Field(64, ge=-1, description="Requests waiting for a replica; beyond: 503 with Retry-After. -1: no limit.")
    retry_after_s: float = Field(1, ge=0, description="Retry-After (seconds) sent with a 503 on overload.")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    limits: ServeLimits = Field(default_factory=ServeLimits)

    @model_validator(mode="after")
    def _replicas(self) -> "ServeAppConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size ({self.max_batch_size}): "
                "a replica would never hold enough requests to fill a batch"
            )
        for name in ("chain_max_new_tokens", "chat_max_new_tokens"):
            if getattr(self, name) > self.limits.max_new_tokens:
                raise ValueError(f"{name} ({getattr(self, name)}) > limits.max_new_tokens ({self.limits.max_new_tokens})")
        return self


class ServeConfig(ServeAppConfig):
    """``serve:`` of a job YAML: the application plus where ``sentiray run`` starts it."""

    app_name: str = Field("student", min_length=1)
    route_prefix: str = "/"
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    blocking: bool = Field(True, description="Keep running until interrupted (False: return once the app is up).")
