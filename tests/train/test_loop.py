"""The shared loop's arithmetic, without Ray: accumulation groups, plateau halving (torch's
semantics), parameter groups, the selection key."""

import random

import pytest
import torch

from sentiray.config import ConfigError, PlateauConfig, TrainConfig
from sentiray.families.base import Selection
from sentiray.train import loop


def test_accumulation_groups_cover_every_micro_batch_once():
    n, accum = 10, 3
    boundaries = [loop.accumulation(i, n, accum) for i in range(n)]
    assert [i for i, (b, _) in enumerate(boundaries) if b] == [2, 5, 8, 9]  # the last step takes one micro-batch
    assert [size for _, size in boundaries] == [3] * 9 + [1]
    assert loop.steps_in_epoch(n, accum) == 4


@pytest.mark.parametrize("mode", ["max", "min"])
@pytest.mark.parametrize("threshold_mode, threshold", [("rel", 1e-4), ("abs", 0.01), ("rel", 0.0)])
@pytest.mark.parametrize("patience", [0, 2])
def test_plateau_halving_follows_torch_reduce_lr_on_plateau(mode, threshold_mode, threshold, patience):
    cfg = PlateauConfig(factor=0.5, patience=patience, min_lr=1e-6, threshold=threshold, threshold_mode=threshold_mode)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=mode,
        factor=0.5,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        min_lr=1e-6,
    )
    state, scale = loop.LoopState(), 1.0
    rng = random.Random(patience)
    values = [round(rng.uniform(0.4, 0.6), 3) for _ in range(30)] + [0.5] * 5  # plateaus and ties
    for value in values:
        reference.step(value)
        if loop.plateau_step(state, value, mode, cfg):
            scale = max(scale * 0.5, cfg.min_lr)  # the loop's floor: train.plateau.min_lr
        assert scale == optimizer.param_groups[0]["lr"], (value, state)


def test_patience_two_halves_after_the_third_bad_epoch():
    state, cfg = loop.LoopState(), PlateauConfig(patience=2)
    reduced = [loop.plateau_step(state, v, "max", cfg) for v in (0.5, 0.4, 0.4, 0.4, 0.4)]
    assert reduced == [False, False, False, True, False]


def test_parameter_groups_take_their_settings_and_unknown_names_fail():
    class Two:
        name = "two"

        def param_groups(self, model):
            return {"encoders": [model[0].weight], "new": [model[1].weight]}

    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    train = TrainConfig(lr=1e-3, eps=1e-4, param_groups={"encoders": {"lr": 1e-5}})
    groups = {g["name"]: g for g in loop.optimizer_groups(Two(), model, train)}
    assert (groups["encoders"]["lr"], groups["new"]["lr"]) == (1e-5, 1e-3)
    assert groups["encoders"]["eps"] == groups["new"]["eps"] == 1e-4
    with pytest.raises(ConfigError, match=r"train.param_groups: no group \['head'\] in family 'two'; its groups"):
        loop.optimizer_groups(Two(), model, TrainConfig(param_groups={"head": {"lr": 1.0}}))


def test_selection_breaks_ties_with_the_next_metric():
    s = Selection((("dev_accuracy", "max"), ("dev_weighted_f1", "max")))
    best = s.key({"dev_accuracy": 0.8, "dev_weighted_f1": 0.7})
    assert s.better({"dev_accuracy": 0.8, "dev_weighted_f1": 0.75}, best)
    assert not s.better({"dev_accuracy": 0.8, "dev_weighted_f1": 0.7}, best)  # equal is not better
    assert not s.better({"dev_accuracy": 0.79, "dev_weighted_f1": 0.99}, best)
    mae = Selection((("dev_MAE", "min"),))
    assert mae.better({"dev_MAE": 0.5}, mae.key({"dev_MAE": 0.6}))


def test_deepspeed_cpu_backend_does_not_compile_its_inference_all_reduce_op():
    # DeepSpeed's own check, as its CPU backend runs it when training starts: with the op marked
    # incompatible it returns None instead of compiling (27 s in every new environment)
    import deepspeed.ops
    from deepspeed.comm.torch import build_shm_op

    compatible = deepspeed.ops.__compatible_ops__
    before = compatible["deepspeed_shm_comm"]
    try:
        loop._without_shm_comm_op()
        assert build_shm_op() is None
    finally:
        compatible["deepspeed_shm_comm"] = before
