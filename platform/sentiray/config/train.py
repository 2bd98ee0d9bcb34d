"""``train:`` (the shared loop: optimisation, schedule, stopping, placement, checkpoints) and
``distill:`` (knowledge distillation from a frozen teacher model).

What differs between methods (streams, loss weights, prompts) lives in each family's own
section (``mulcot:``, ``lrsa:``, ``mse_adapter:``), not here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from sentiray.config.base import Section, moved_fields

# Fields that left ``train:`` for a family's section.
MOVED_FROM_TRAIN = {
    "role": "mulcot.role",
    "w_chain": "mulcot.w_chain",
    "w_label": "mulcot.w_label",
    "chain_column": "mulcot.chain_column",
    "max_length": "mulcot.max_length",
}


class PlateauConfig(Section):
    """``scheduler: plateau``: torch's ReduceLROnPlateau on the selection metric, per epoch.

    The rate is multiplied by ``factor`` once more than ``patience`` epochs in a row brought
    no improvement (patience 2: after the third), never below ``min_lr``. Improvement means
    better than the best by ``threshold`` (relative or absolute), as in torch.
    """

    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(2, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    threshold: float = Field(1e-4, ge=0)
    threshold_mode: Literal["rel", "abs"] = "rel"


class GroupConfig(Section):
    """Optimizer settings of one parameter group the family names (unset: the train.* value)."""

    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    eps: float | None = Field(None, gt=0)


class TrainConfig(Section):
    family: str = Field("mulcot", description="Model family plugged into the shared loop: mulcot, lrsa, mse_adapter.")
    output: str = Field("checkpoints/model", description="URI for checkpoints and the final model.")
    epochs: int = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon (MSE-Adapter's paper: 1e-4).")
    param_groups: dict[str, GroupConfig] = Field(
        default_factory=dict,
        description="Per parameter group of the family (e.g. lrsa: encoders, new): lr, weight_decay, eps.",
    )
    batch_size: int = Field(4, gt=0, description="Micro-batch per worker.")
    stream: bool = Field(
        True,
        description="Stream the train split through Ray Data (transform in Ray Data actors, each worker its "
        "shard); false: every worker loads the whole split into memory.",
    )
    cache_mb: float = Field(
        2048,
        ge=0,
        description="stream: false: transformed rows each worker keeps for later epochs, up to this many MB "
        "(rows past it are transformed again every epoch; 0: keep none).",
    )
    data_workers: int = Field(1, gt=0, description="stream: Ray Data actors running the family's row transform.")
    data_cpus: float = Field(0.25, ge=0, description="stream: CPUs reserved per transform actor.")
    shuffle_buffer: int = Field(256, ge=0, description="stream: rows of the seeded per-epoch local shuffle (0: none).")
    prefetch_batches: int = Field(2, ge=0, description="stream: micro-batches prepared ahead of the step loop.")
    eval_batch_size: int = Field(16, gt=0, description="Rows per prediction batch in the dev evaluation.")
    grad_accum: int = Field(
        1, gt=0, description="Micro-batches per optimizer step (an epoch's last step may take fewer)."
    )
    grad_clip: float | None = Field(1.0, gt=0)
    scheduler: Literal["constant", "linear", "cosine", "plateau"] = "plateau"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many epochs in a row without a better dev selection key."
    )
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = False
    num_workers: int = Field(1, gt=0)
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool = False
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    keep_checkpoints: int = Field(
        2, gt=0, description="Latest checkpoints kept for resume (the best model is exported apart)."
    )
    max_failures: int = Field(2, ge=-1)
    seed: int = 0
    register_as: str | None = Field(None, description="MLflow registered model name (default: the family's).")
    checkpoint_every: int | None = Field(
        None, gt=0, description="Also checkpoint every N optimizer steps (epoch ends always)."
    )
    log_every: int = Field(
        5, gt=0, description="Log the training loss every N optimizer steps (console, MLflow, the progress file)."
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict, description="Extra DeepSpeed keys; 'auto' values filled from train."
    )
    inject_fault_at_step: int | None = Field(
        None, gt=0, description="Testing: raise once in the last worker at this step, to exercise resume."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        moved_fields(raw, "train", MOVED_FROM_TRAIN)
        return raw


class DistillConfig(Section):
    teacher_path: str = Field(..., description="The frozen assistant (HF folder or s3:// prefix).")
    lambda_kd: float = Field(0.3, ge=0, le=1)
    tau: float = Field(2.0, gt=0)
    scale_tau2: bool = True
    hidden_mse: bool = False
    hidden_weight: float = Field(1.0, ge=0)
