"""``teacher:`` (the rationales stage) and ``augment:`` (the assistant's own chains)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sentiray.config.base import Section
from sentiray.config.model import ModelConfig


class TeacherConfig(Section):
    backend: Literal["hf", "openai", "vllm"] = "hf"
    name: str | None = Field(
        None, description="Recorded with every rationale; default: the model path or endpoint model."
    )
    model: ModelConfig | None = None
    endpoint: str | None = Field(None, description="openai: base URL, e.g. http://host:8000/v1.")
    endpoint_model: str | None = Field(None, description="openai: the model name sent in requests.")
    api_key_env: str = "OPENAI_API_KEY"
    max_new_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0)
    concurrency: int = Field(1, gt=0, description="hf: actors; openai: requests in flight.")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    timeout_s: float = Field(120, gt=0, description="openai: seconds to wait for an answer (per read).")
    max_retries: int = Field(5, ge=0, description="openai: retries on 429, 5xx, timeouts and refused connections.")
    backoff_s: float = Field(0.5, gt=0, description="openai: first backoff; doubles per retry, full jitter.")
    backoff_max_s: float = Field(20, gt=0, description="openai: longest wait between retries (also caps Retry-After).")
    seed: int = Field(0, description="Sampling seed (temperature > 0).")
    prompts_dir: str | None = Field(None, description="Folder with prompt templates overriding the built-in ones.")
    splits: list[Literal["train", "dev", "test"]] = Field(
        default_factory=lambda: ["train", "dev", "test"], description="Splits of data.input to write rationales for."
    )
    rationalize_splits: list[Literal["train", "dev", "test"]] = Field(
        default_factory=lambda: ["train"],
        description="Splits whose wrong pass-1 chains get the label-conditioned pass 2 (gold labels go into the "
        "prompt: keep dev/test out unless their chains are only references).",
    )
    lrsa_rationales: bool = Field(
        False, description="Also write LRSA's text_explanation and image_description (2 more generations per row)."
    )
    lrsa_max_new_tokens: int = Field(128, gt=0)
    shard_rows: int = Field(256, gt=0, description="Rows per committed output shard (the unit of resume).")
    max_error_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Stop the run (nothing committed) when more than this share of a shard's rows "
        "fail with teacher errors: the teacher is down, not the rows bad.",
    )
    allow_rejects: bool = Field(
        False,
        description="Finish (write _manifest.json, exit 0) even when rows are left rejected for teacher-side "
        "failures (429, 5xx, timeouts, refused connections after the retries). By default such a run exits non-zero "
        "and leaves the output incomplete; rerunning the same command retries just those rows.",
    )
    keep_disagreeing_pass2: bool = Field(
        False,
        description="Keep for training (use_for_training=true) the rows whose chain still disagrees with the "
        "gold label after pass 2 was tried: a pass-2 chain whose parsed label is not the gold one, or the wrong pass-1 "
        "chain kept because pass 2 failed. Either way the row keeps its chain and its rationale_note.",
    )
    lease_ttl_s: float = Field(
        60,
        gt=0,
        description="A run holds a lease on data.output (_lease.json, heartbeat every ttl/4). Another run's "
        "lease counts as abandoned after this many seconds without a heartbeat (at once if its process on this host "
        "is gone); until then a second run on the same output stops with an error naming the first.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: extra vllm.LLM arguments (tensor_parallel_size, ...)."
    )

    @model_validator(mode="after")
    def _backend_needs(self) -> TeacherConfig:
        if self.backend in ("hf", "vllm") and self.model is None:
            raise ValueError(f"backend {self.backend!r} needs teacher.model.path")
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs teacher.endpoint (base URL of a chat-completions server)")
        if not self.splits:
            raise ValueError("teacher.splits is empty: name at least one of train, dev, test")
        return self


class AugmentConfig(Section):
    """The trained assistant writes its own chains for the training set (MulCoT-RD)."""

    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the assistant's chains (paper: 0.7).")
    seed: int = 0
    max_new_tokens: int = Field(512, gt=0)
    batch_size: int = Field(8, gt=0)
    concurrency: int = Field(1, gt=0, description="Actors, each with the assistant loaded once.")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    shard_rows: int = Field(256, gt=0)
