"""The per-worker training loop, shared by every model family.

Plain PyTorch + DeepSpeed; Ray appears only at the edges (context, checkpoint in,
``ray.train.report`` out). Every rank makes the same number of ``report`` calls.

Checkpoint contents (one directory, files from every rank merged by Ray):
  ``ds/``          DeepSpeed state (model, optimizer and scheduler shards)
  ``state.json``   epoch, micro-batches done in it, optimizer step, plateau state (rank 0)
  ``hf/``          the model in Hugging Face format (epoch ends only, rank 0)
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from sentiray.config import JobConfig, TrainConfig, validate
from sentiray.data import storage
from sentiray.train import deepspeed_config, families

DS_TAG = "ds"


@dataclass
class LoopState:
    epoch: int = 0
    micro_done: int = 0  # micro-batches of this worker finished in the current epoch
    step: int = 0  # optimizer steps
    best: float | None = None
    bad_epochs: int = 0  # epochs without improvement (plateau schedule)
    lr_scale: float = 1.0
    resumed_from_step: int | None = None


def micro_batches(n_rows: int, rank: int, world: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's micro-batches of row indices for one epoch.

    A seeded permutation per epoch, padded by wrapping so every rank gets the same number
    of micro-batches (ranks must step together), then strided by rank.
    """
    order = list(range(n_rows))
    random.Random(seed * 1000 + epoch).shuffle(order)
    per_rank = math.ceil(n_rows / world)
    order = (order * (world + 1))[: per_rank * world]
    mine = order[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    """Warm-up then constant / linear / cosine decay; 'plateau' is constant here and halved on
    dev plateaus by the loop (DeepSpeed steps the scheduler every optimizer step)."""
    warmup = int(train.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if train.scheduler in ("constant", "plateau"):
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if train.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _all_gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


class _MlflowSink:
    """Rank 0 logs metrics straight into the stage's MLflow run (no active run needed)."""

    def __init__(self, info: dict[str, Any] | None, rank: int):
        self.client = None
        if info and rank == 0:
            import mlflow

            self.client = mlflow.MlflowClient(info["tracking_uri"])
            self.run_id = info["run_id"]

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)


def _maybe_inject_fault(train: TrainConfig, step: int, rank: int, world: int) -> None:
    """Testing aid: fail once, on the last rank, when reaching ``inject_fault_at_step``."""
    if train.inject_fault_at_step is None or step != train.inject_fault_at_step or rank != world - 1:
        return
    marker = storage.join(train.output, f"_fault_injected_at_step_{step}")
    if storage.exists(marker):
        return
    storage.write_text(marker, "1")
    raise RuntimeError(f"injected fault at optimizer step {step} (train.inject_fault_at_step)")


def train_func(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` = {"job": JobConfig dict, "mlflow": {...} | None}."""
    import deepspeed
    import ray.train

    job: JobConfig = validate(config["job"], source="train worker")
    train = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(train.seed)
    family = families.create(job)
    train_rows = family.load_rows("train")
    dev_rows = family.load_rows("dev")
    model = family.build_model()

    batches_per_epoch = len(micro_batches(len(train_rows), rank, world, train.batch_size, train.seed, 0))
    steps_per_epoch = max(1, batches_per_epoch // train.grad_accum)
    total_steps = train.max_steps or steps_per_epoch * train.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, eps=1e-8)
    scheduler = make_scheduler(optimizer, train, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config.build(train, world), dist_init_required=False,
    )

    state = LoopState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(os.path.join(d, DS_TAG), tag=DS_TAG)
            with open(os.path.join(d, "state.json")) as f:
                state = LoopState(**json.load(f))
        state.resumed_from_step = state.step
        if rank == 0:
            print(f"[train] resumed from step {state.step} (epoch {state.epoch}, micro-batch {state.micro_done})")

    sink = _MlflowSink(config.get("mlflow"), rank)
    metric_name = family.metric
    start_time = time.perf_counter()
    done = state.step >= total_steps
    window: list[dict[str, float]] = []

    while state.epoch < train.epochs and not done:
        batches = micro_batches(len(train_rows), rank, world, train.batch_size, train.seed, state.epoch)
        engine.train()
        for index in range(state.micro_done, len(batches)):
            loss, parts = family.loss(engine, family.collate([train_rows[i] for i in batches[index]]))
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            state.micro_done = index + 1
            window.append(parts)
            if not boundary:
                continue
            state.step += 1
            _maybe_inject_fault(train, state.step, rank, world)
            if state.step % train.log_every == 0 or state.step == total_steps:
                metrics = _mean(window) | {"lr": optimizer.param_groups[0]["lr"], "epoch": state.epoch}
                metrics["samples_per_s"] = (state.step - (state.resumed_from_step or 0)) * train.batch_size * train.grad_accum * world / (time.perf_counter() - start_time)
                window = []
                sink.log(metrics, state.step)
                if rank == 0:
                    eta = (total_steps - state.step) * (time.perf_counter() - start_time) / max(1, state.step - (state.resumed_from_step or 0))
                    print(f"[train] step {state.step}/{total_steps} loss {metrics['loss']:.4f} "
                          f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.1f} samples/s ETA {eta:.0f}s")
                ray.train.report({"step": state.step, "epoch": state.epoch, **{k: v for k, v in metrics.items()}})
            if train.checkpoint_every and state.step % train.checkpoint_every == 0 and state.step < total_steps:
                _save(engine, family, state, rank, {"step": state.step, "epoch": state.epoch,
                                                    metric_name: state.best if state.best is not None else _worst(family)},
                      export=False)
            if state.step >= total_steps:
                done = True
                break
        # epoch end (also when max_steps ended it early): dev metrics, plateau, checkpoint
        combined = _combine([family.evaluate(engine.module, dev_rows[rank::world])], world)
        dev = family.summarize(combined)
        improved = state.best is None or (dev[metric_name] > state.best if family.mode == "max" else dev[metric_name] < state.best)
        if improved:
            state.best, state.bad_epochs = dev[metric_name], 0
        else:
            state.bad_epochs += 1
            if train.scheduler == "plateau" and state.bad_epochs >= 2:  # patience 2, floor 1e-6 (method.md)
                state.lr_scale = max(state.lr_scale * 0.5, 1e-6 / train.lr)
                state.bad_epochs = 0
                _set_lr_scale(optimizer, scheduler, train.lr, state.lr_scale)
        state.epoch += 1
        state.micro_done = 0
        sink.log(dev | {"epoch": state.epoch}, state.step)
        if rank == 0:
            print(f"[train] epoch {state.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in dev.items()))
        trained = (state.step - (state.resumed_from_step or 0)) * train.batch_size * train.grad_accum * world
        _save(engine, family, state, rank, {
            "step": state.step, "epoch": state.epoch, **dev,
            "resumed_from_step": state.resumed_from_step if state.resumed_from_step is not None else -1,
            "samples_per_s": trained / (time.perf_counter() - start_time),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }, export=True)


def _worst(family: families.Family) -> float:
    return -1e9 if family.mode == "max" else 1e9


def _mean(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for parts in window for k in parts}
    return {k: sum(p[k] for p in window if k in p) / sum(1 for p in window if k in p) for k in keys}


def _combine(results: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """Add up the evaluation sums of every worker (lists are concatenated)."""
    gathered = _all_gather_objects(results[0], world)
    combined: dict[str, Any] = {}
    for part in gathered:
        for key, value in part.items():
            if isinstance(value, list):
                combined.setdefault(key, []).extend(value)
            else:
                combined[key] = combined.get(key, 0) + value
    return combined


def _set_lr_scale(optimizer, scheduler, base_lr: float, scale: float) -> None:
    """Scale the base learning rate (plateau halving), keeping the warm-up/decay factor."""
    scheduler.base_lrs = [base_lr * scale for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["lr"] = base_lr * scale * factor


def _save(engine, family: families.Family, state: LoopState, rank: int, metrics: dict[str, Any], export: bool) -> None:
    """Every rank writes its DeepSpeed shards; rank 0 adds the loop state and the HF export."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="sentiray-ckpt-") as tmp:
        engine.save_checkpoint(os.path.join(tmp, DS_TAG), tag=DS_TAG)
        if export:
            _export_hf(engine, family, os.path.join(tmp, "hf"), rank)
        if rank == 0:
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(asdict(state), f)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _export_hf(engine, family: families.Family, out_dir: str, rank: int) -> None:
    """Under ZeRO-3 the weights are sharded: gather them on every rank, save on rank 0."""
    zero3 = engine.zero_optimization_stage() == 3
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            if rank == 0:
                family.export(engine.module, out_dir)
    elif rank == 0:
        family.export(engine.module, out_dir)
