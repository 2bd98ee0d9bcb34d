"""The DeepSpeed config, built from ``train:`` so there is one source of truth.

``train.deepspeed`` may add or override any DeepSpeed key; values written ``"auto"`` there
are filled from the rest of the config, as in the Hugging Face integration.
"""

from __future__ import annotations

import copy
from typing import Any

from sentiray.config import TrainConfig


def _auto_values(train: TrainConfig, world_size: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip or 0.0,
    }


def _fill_auto(node: Any, values: dict[str, Any], path: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _fill_auto(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        key = path.rsplit(".", 1)[-1]
        if key not in values:
            raise ValueError(f"train.deepspeed.{path}: no value to fill 'auto' from (known: {sorted(values)})")
        return values[key]
    return node


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for ``world_size`` workers."""
    auto = _auto_values(train, world_size)
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 2:
        zero.update({"overlap_comm": False, "contiguous_gradients": True})
    if train.offload and train.zero_stage >= 2:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": train.use_gpu}
        if train.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": train.use_gpu}
    if train.zero_stage == 3:
        # Gather the full weights on save so the final model can be written in HF format.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        **auto,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        # We hand DeepSpeed a torch optimizer (DeepSpeed's fused ones need CUDA), which
        # ZeRO accepts with this flag.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _fill_auto(_merge(config, train.deepspeed), auto)
