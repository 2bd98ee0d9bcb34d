"""Config: pydantic schemas per concern, YAML loading and ``a.b=c`` overrides.

A job YAML names its ``stage`` and carries the sections that stage needs. It is validated
once on the driver, before Ray starts, and shipped to workers as a plain dict
(``cfg.model_dump()``), which each worker validates again.

The schemas are the documentation of every knob: read them to learn what a YAML may say.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
Stage = Literal["data", "rationales", "train", "augment", "evaluate", "tune", "serve"]


class ConfigError(ValueError):
    """A config is wrong; the message names each field and why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- storage / ray / tracking


class StorageConfig(Section):
    root: str = Field("runs", description="Base URI for outputs given as relative names (local path or s3://).")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts (or joins, via RAY_ADDRESS) a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local cluster started by sentiray.")
    namespace: str | None = None
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class TrackingConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or ./runs/mlflow.")
    experiment: str = "sentiray"
    run_name: str | None = None
    parent_run_id: str | None = Field(None, description="Nest this stage's run under an existing run (pipelines).")
    tags: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------- data


class DataConfig(Section):
    format: DataFormat = "synthetic"
    input: str | None = Field(None, description="Folder (or file) of the public data set; not used by 'synthetic'.")
    output: str = Field("data/synthetic", description="URI of the canonical data set to write (relative: under storage.root).")
    task: Task | None = Field(None, description="Task; implied by the format except for 'synthetic' (default msc).")
    size: int = Field(600, gt=0, description="Synthetic: total samples over all splits.")
    seed: int = 0
    split_ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/dev/test for formats without splits.")
    image_mode: Literal["bytes", "uri"] = Field("bytes", description="Store images inside the Parquet rows or as URIs.")
    image_size: int = Field(64, ge=8, le=1024, description="Synthetic: side of the drawn images in pixels.")
    features: str | None = Field(None, description="MELD: the pickle of audio/video features per utterance.")
    shard_rows: int = Field(2000, gt=0)
    overwrite: bool = Field(False, description="Rewrite an output that is already complete.")

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative numbers summing to 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _input_needed(self) -> "DataConfig":
        if self.format not in ("synthetic",) and not self.input:
            raise ValueError(f"format {self.format!r} reads a data set: set data.input to its folder")
        return self


# --------------------------------------------------------------------------- models


class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_on_save: bool = Field(True, description="Save the merged model (True) or the adapter alone (False).")


class ModelConfig(Section):
    path: str = Field(..., description="HF checkpoint: a local folder or an s3:// prefix.")
    kind: Literal["vlm", "causal_lm", "encoder"] = "vlm"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)


# --------------------------------------------------------------------------- teacher


class TeacherConfig(Section):
    backend: Literal["hf", "openai", "vllm"] = "hf"
    name: str | None = Field(None, description="Recorded with every rationale; default: the model path or endpoint model.")
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
    lrsa_rationales: bool = Field(False, description="Also write LRSA's text_explanation and image_description (2 more generations per row).")
    lrsa_max_new_tokens: int = Field(128, gt=0)
    shard_rows: int = Field(256, gt=0, description="Rows per committed output shard (the unit of resume).")
    max_error_fraction: float = Field(
        0.5, gt=0, le=1, description="Stop the run (nothing committed) when more than this share of a shard's rows "
        "fail with teacher errors: the teacher is down, not the rows bad."
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: extra vllm.LLM arguments (tensor_parallel_size, ...).")

    @model_validator(mode="after")
    def _backend_needs(self) -> "TeacherConfig":
        if self.backend in ("hf", "vllm") and self.model is None:
            raise ValueError(f"backend {self.backend!r} needs teacher.model.path")
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs teacher.endpoint (base URL of a chat-completions server)")
        if not self.splits:
            raise ValueError("teacher.splits is empty: name at least one of train, dev, test")
        return self


# --------------------------------------------------------------------------- training


class TrainConfig(Section):
    family: str = Field("mulcot", description="Model family plugged into the shared loop (mulcot, lrsa, mse_adapter).")
    role: Literal["assistant", "student"] = "assistant"
    output: str = Field("checkpoints/assistant", description="URI for checkpoints and the final model.")
    epochs: int = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, gt=0, description="Micro-batch per worker.")
    grad_accum: int = Field(1, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    scheduler: Literal["constant", "linear", "cosine", "plateau"] = "plateau"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = False
    num_workers: int = Field(1, gt=0)
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool = False
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    keep_checkpoints: int = Field(2, gt=0)
    max_failures: int = Field(2, ge=-1)
    seed: int = 0
    w_chain: float = Field(1.0, ge=0, description="w_c: weight of the chain stream loss.")
    w_label: float = Field(1.0, ge=0, description="w_l: weight of the label stream loss.")
    max_length: int = Field(512, gt=0)
    register_as: str | None = Field(None, description="MLflow registered model name (default sentiray-<role>).")
    chain_column: str = Field("rationale", description="Column holding the reasoning chain to learn (teacher output).")
    checkpoint_every: int | None = Field(None, gt=0, description="Also checkpoint every N optimizer steps (epoch ends always).")
    log_every: int = Field(5, gt=0, description="Report the training loss every N optimizer steps.")
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="Extra DeepSpeed keys; 'auto' values filled from train.")
    inject_fault_at_step: int | None = Field(
        None, gt=0, description="Testing: raise once in worker 1 (or 0) at this step, to exercise resume."
    )


class DistillConfig(Section):
    teacher_path: str = Field(..., description="The frozen assistant (HF folder or s3:// prefix).")
    lambda_kd: float = Field(0.3, ge=0, le=1)
    tau: float = Field(2.0, gt=0)
    scale_tau2: bool = True
    hidden_mse: bool = False
    hidden_weight: float = Field(1.0, ge=0)


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


class EvaluateConfig(Section):
    split: Literal["train", "dev", "test"] = "test"
    output: str = Field("reports/evaluate", description="URI for report.json, report.md and plots.")
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N rows of the split.")
    generate_chains: bool = Field(True, description="Also generate reasoning chains (slower) for the reasoning metrics.")
    max_new_tokens: int = Field(256, gt=0)
    reference_column: str | None = Field(
        None, description="Reference chains for BLEU/ROUGE; default: 'rationale' when present, else 'gold_chain'."
    )
    register_name: str | None = Field(None, description="Also record the metrics on this registered model's latest version.")


# --------------------------------------------------------------------------- tune / serve


class TuneConfig(Section):
    """``tune:`` of a sweep job: which training fields to vary, how to search, when to stop.

    The rest of the job (``data``, ``model``, ``train``, ``distill``) is the base training
    job; each trial is that job with the sampled values applied as ``a.b=value`` overrides,
    trained by Ray Train. One Tune iteration is one training epoch.
    """

    metric: str = Field(
        "dev_accuracy",
        description="What trials are compared by, at every epoch end: a dev metric of the family (dev_accuracy, "
                    "dev_macro_f1, ...) or the epoch's mean training loss (train_loss, or per stream train_ce_c, "
                    "train_ce_l, ...: unweighted, so they compare across loss-weight values; train_loss does not).",
    )
    mode: Literal["max", "min"] = "max"
    num_samples: int | None = Field(
        None, gt=0, description="Trials to sample; with grid entries, passes over the whole grid. Default: 1 for the "
                                "grid searcher, else 4.",
    )
    search_space: dict[str, Any] = Field(
        ..., min_length=1,
        description="Config field -> distribution: {choice|grid: [values]}, {uniform|loguniform: [low, high]}, "
                    "{randint|lograndint: [low, high]} (ints, high included).",
    )
    searcher: Literal["random", "grid", "optuna"] = Field("random", description="optuna: TPE (random until it has 10 results).")
    scheduler: Literal["fifo", "asha"] = Field("asha", description="asha stops poor trials at rungs; fifo runs each to the end.")
    grace_period: int = Field(1, gt=0, description="ASHA: epochs every trial trains before it may be stopped.")
    reduction_factor: float = Field(2, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung.")
    max_t: int | None = Field(None, gt=0, description="Epochs of each trial (ASHA's max_t); default train.epochs.")
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="Default: as many as the cluster's CPUs (and GPUs) hold, given each trial's needs."
    )
    trial_cpus: float = Field(
        1, ge=0, description="CPUs held by each trial's driver (the Tune trial that runs TorchTrainer.fit); its "
                             "Train workers hold train.num_workers x train.cpus_per_worker more.",
    )
    seed: int | None = Field(0, description="Seed of the searcher's sampling (None: not reproducible).")
    output: str = Field("tune", description="URI of the sweep: Tune state, one folder per trial, best.yaml.")
    resume: bool | Literal["auto"] = Field(
        "auto", description="auto: continue the sweep found at tune.output, else start one; true: it must exist; "
                            "false: start a new one (fails if tune.output holds a sweep).",
    )

    @field_validator("search_space")
    @classmethod
    def _space_shape(cls, v: dict[str, Any]) -> dict[str, Any]:
        from sentiray.sweep.space import check_shape

        check_shape(v)  # raises ValueError naming the entry
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TuneConfig":
        from sentiray.sweep.space import check_searcher

        check_searcher(self.search_space, self.searcher)
        if self.num_samples is None:
            self.num_samples = 1 if self.searcher == "grid" else 4
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) > max_t ({self.max_t})")
        return self


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


# --------------------------------------------------------------------------- the job


# Which sections each stage needs. A stage's module reads only these.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
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
    data: DataConfig | None = None
    model: ModelConfig | None = None
    teacher: TeacherConfig | None = None
    train: TrainConfig | None = None
    distill: DistillConfig | None = None
    augment: AugmentConfig | None = None
    evaluate: EvaluateConfig | None = None
    tune: TuneConfig | None = None
    serve: ServeConfig | None = None

    @model_validator(mode="after")
    def _sections_for_stage(self) -> "JobConfig":
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


# --------------------------------------------------------------------------- loading


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """``["a.b=1", "c=x"]`` -> ``[(["a", "b"], 1), (["c"], "x")]``; values parsed as YAML."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        path = [p for p in key.strip().split(".")]
        if not all(path):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        parsed.append((path, value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for path, value in parse_overrides(overrides):
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return out


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this section)"
        got = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def validate(raw: dict[str, Any], source: str = "<dict>") -> JobConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read a job YAML, apply ``a.b=c`` overrides and validate."""
    raw = apply_overrides(load_raw(path), overrides or [])
    return validate(raw, source=str(path))


def to_yaml(cfg: JobConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
