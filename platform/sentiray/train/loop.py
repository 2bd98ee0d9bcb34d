"""The per-worker training loop, shared by every model family.

Plain PyTorch + DeepSpeed; Ray appears only at the edges (context, checkpoint in,
``ray.train.report`` out). Every rank makes the same ``report`` calls and, under ZeRO-3,
the same forward passes (the dev evaluation pads uneven shards; families keep their
micro-batches' forward passes equal).

``ray.train.report`` is called at checkpoints only (epoch ends, ``checkpoint_every``); the
epoch's report carries its mean training losses (``train_loss``, ``train_<part>``). Step logs
go straight to MLflow, the progress file and the console: Ray Train takes one report per
worker each time its controller polls (every 2 s), so a report per log step would hold the
loop whenever steps are fast (the demo's MSE-Adapter ran at 40 instead of 320 samples/s).

One epoch: the rank's micro-batches (a seeded permutation of the rows, padded by wrapping
so that every rank has as many), grouped ``train.grad_accum`` at a time into optimizer
steps; an epoch's last group may be shorter, and its gradient is the mean over the
micro-batches it has, so every row trains and the schedule's length is the real number of
steps. At the epoch end: the dev evaluation, the selection key (the family's metric and
tie-breakers), plateau halving (torch's ReduceLROnPlateau semantics), early stopping, a
checkpoint, and, when the epoch is the best so far, an export of the model.

Checkpoints (``ray.train.report``, the latest ``train.keep_checkpoints`` kept):
  ``ds/``          DeepSpeed state (trainable parameters only when the backbone is frozen)
  ``state.json``   epoch, micro-batches done in it, optimizer step, best key, plateau state

Exports (rank 0, the best epoch only) go to ``train.output/exports/<name>/`` with the
family's manifest; ``train.output/best.json`` (written after the export, so it always
names a complete one) says which. A mid-epoch checkpoint never touches either.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sentiray.config import JobConfig, TrainConfig, validate
from sentiray.data import storage
from sentiray.families.base import Family, Skipped
from sentiray.train.data import micro_batches, worker_rows  # noqa: F401 (micro_batches: part of the loop's API)

DS_TAG = "ds"
BEST = "best.json"
EXPORTS = "exports"
PROGRESS = "_progress.json"  # rank 0's latest step, for the driver's progress bar


@dataclass
class LoopState:
    epoch: int = 0
    micro_done: int = 0  # micro-batches of this worker finished in the current epoch
    step: int = 0  # optimizer steps
    best_key: list[float] | None = None  # selection key of the best epoch so far
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs in a row without a better key (early stopping)
    plateau_best: float | None = None  # ReduceLROnPlateau's state on the primary metric
    plateau_bad: int = 0
    lr_scale: float = 1.0
    stopped_early: bool = False
    resumed_from_step: int | None = None


# --------------------------------------------------------------------------- the epoch's steps


def steps_in_epoch(n_micro: int, grad_accum: int) -> int:
    return math.ceil(n_micro / grad_accum)


def accumulation(index: int, n_micro: int, grad_accum: int) -> tuple[bool, int]:
    """(is this micro-batch the last of its optimizer step, micro-batches in that step)."""
    group = index // grad_accum
    size = min(grad_accum, n_micro - group * grad_accum)
    return (index + 1) % grad_accum == 0 or index == n_micro - 1, size


# --------------------------------------------------------------------------- schedules


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    """Warm-up then constant / linear / cosine decay; 'plateau' is constant here and scaled
    on dev plateaus by the loop (DeepSpeed steps the scheduler every optimizer step)."""
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


def plateau_step(state: LoopState, value: float, mode: str, cfg) -> bool:
    """torch's ReduceLROnPlateau.step on ``value``: True when the rate is to be reduced.

    Improvement: better than the best by ``threshold`` (relative or absolute); the rate
    drops once more than ``patience`` epochs in a row brought none, then the count restarts.
    """
    best = state.plateau_best
    if best is None:
        improved = True
    elif cfg.threshold_mode == "rel":
        improved = value > best * (1 + cfg.threshold) if mode == "max" else value < best * (1 - cfg.threshold)
    else:
        improved = value > best + cfg.threshold if mode == "max" else value < best - cfg.threshold
    if improved:
        state.plateau_best, state.plateau_bad = value, 0
        return False
    state.plateau_bad += 1
    if state.plateau_bad > cfg.patience:
        state.plateau_bad = 0
        return True
    return False


def _apply_lr_scale(optimizer, scheduler, base_lrs: list[float], scale: float) -> None:
    """Scale every group's base rate (plateau), keeping the warm-up/decay factor."""
    scheduler.base_lrs = [lr * scale for lr in base_lrs]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = lr * factor


def optimizer_groups(family: Family, model: torch.nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """The family's named parameter groups with lr / weight decay / eps from train.param_groups."""
    from sentiray.config import ConfigError

    named = family.param_groups(model)
    unknown = set(train.param_groups) - set(named)
    if unknown:
        raise ConfigError(
            f"train.param_groups: no group {sorted(unknown)} in family {family.name!r}; its groups: {sorted(named)}"
        )
    groups = []
    for name, params in named.items():
        if not params:
            continue
        g = train.param_groups.get(name)
        groups.append(
            {
                "params": params,
                "name": name,
                "lr": g.lr if g and g.lr is not None else train.lr,
                "weight_decay": g.weight_decay if g and g.weight_decay is not None else train.weight_decay,
                "eps": g.eps if g and g.eps is not None else train.eps,
            }
        )
    return groups


# --------------------------------------------------------------------------- across ranks


def _all_gather(obj: Any, world: int) -> list[Any]:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _mean_over_ranks(window: list[dict[str, float]], world: int) -> dict[str, float]:
    """The mean of each logged part over the window's steps and over every rank."""
    sums: dict[str, list[float]] = {}
    for rank_parts in _all_gather(window, world):
        for parts in rank_parts:
            for k, v in parts.items():
                sums.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def evaluate_dev(
    family: Family, model: torch.nn.Module, rows: list[dict[str, Any]], rank: int, world: int, batch_size: int
) -> dict[str, float]:
    """Dev metrics over every rank's share of ``rows``.

    Each rank predicts rows ``rank::world``, padded with repeats so that all ranks run the
    same number of equally sized batches (ZeRO-3 gathers parameters collectively: a rank with
    one batch more would wait forever); the padding's predictions are dropped.
    """
    per_rank = math.ceil(len(rows) / world)
    mine = list(range(rank, len(rows), world))
    padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
    predictor = family.predictor(model)
    preds: dict[int, dict[str, Any]] = {}
    for start in range(0, per_rank, batch_size):
        idx = padded[start : start + batch_size]
        for i, p in zip(idx, predictor.predict([rows[i] for i in idx])):
            preds.setdefault(i, p)
    combined: dict[int, dict[str, Any]] = {}
    for part in _all_gather({i: preds[i] for i in mine}, world):
        combined.update(part)
    order = sorted(combined)
    metrics = predictor.metrics([rows[i] for i in order], [combined[i] for i in order])
    return {f"dev_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


# --------------------------------------------------------------------------- MLflow (rank 0)


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
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_params(self, params: dict[str, Any]) -> None:
        """Run parameters (a resumed attempt logs the same values again, which MLflow allows)."""
        if self.client is None:
            return
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])


def _maybe_inject_fault(train: TrainConfig, step: int, rank: int, world: int) -> None:
    """Testing aid: fail once, on the last rank, when reaching ``inject_fault_at_step``."""
    if train.inject_fault_at_step is None or step != train.inject_fault_at_step or rank != world - 1:
        return
    marker = storage.join(train.output, f"_fault_injected_at_step_{step}")
    if storage.exists(marker):
        return
    storage.write_text(marker, "1")
    raise RuntimeError(f"injected fault at optimizer step {step} (train.inject_fault_at_step)")


# --------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What one worker holds during training."""

    job: JobConfig
    family: Family
    engine: Any
    optimizer: Any
    scheduler: Any
    base_lrs: list[float]
    rank: int
    world: int
    rows: Any  # sentiray.train.data.StreamedRows | InMemoryRows
    dev_rows: list[dict[str, Any]]
    total_steps: int
    sink: _MlflowSink
    state: LoopState = field(default_factory=LoopState)
    skipped: Skipped = field(default_factory=Skipped)
    counting_epoch: int = 0  # skipped rows are counted (and reported) in the first epoch this attempt trains
    n_micro: int = 0  # micro-batches per epoch, the same on every rank
    last_dev: dict[str, float] = field(default_factory=dict)  # the last epoch's primary dev metric
    last_log: tuple[float, int] | None = None  # (time, step) of the last step log
    epoch_losses: dict[str, tuple[float, int]] = field(default_factory=dict)  # this epoch's (sum, count) per part
    start_time: float = field(default_factory=time.perf_counter)


def train_func(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` = {"job": JobConfig dict, "mlflow": {...} | None}."""
    import ray.train

    from sentiray import families
    from sentiray.data import schema

    job: JobConfig = validate(config["job"], source="train worker")
    train = job.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(train.seed)
    family = families.create(job)
    columns = list(family.columns) if family.columns else None
    dev_rows = schema.read_rows(family.data_uri(), "dev", columns)  # small: in memory
    run = _setup(job, family, rank, world, worker_rows(family, rank, world), dev_rows, config.get("mlflow"))
    _resume(run, ray.train.get_checkpoint())
    while run.state.epoch < train.epochs and not _finished(run):
        _train_epoch(run)
        _end_epoch(run)


def _setup(job, family, rank, world, rows, dev_rows, mlflow_info) -> _Run:
    import deepspeed

    from sentiray.train import deepspeed_config

    train = job.train
    model = family.build_model()
    n_micro = rows.n_micro()
    per_epoch = steps_in_epoch(n_micro, train.grad_accum)
    total_steps = min(train.max_steps, per_epoch * train.epochs) if train.max_steps else per_epoch * train.epochs
    groups = optimizer_groups(family, model, train)
    optimizer = torch.optim.AdamW(groups)
    scheduler = make_scheduler(optimizer, train, total_steps)
    if not train.use_gpu:
        _without_shm_comm_op()
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config.build(train, world),
        dist_init_required=False,
    )
    if rank == 0:
        from sentiray.models.loading import count_parameters

        trainable, total = count_parameters(engine.module)
        print(
            f"[train] {family.name}: {trainable:,d} trainable / {total - trainable:,d} frozen parameters; "
            f"{rows.n_rows} train rows ({'streamed' if train.stream else 'in memory'}), "
            f"{n_micro} micro-batches x {world} worker(s) per epoch, "
            f"{per_epoch} optimizer steps per epoch, {total_steps} in all",
            flush=True,
        )
    sink = _MlflowSink(mlflow_info, rank)
    if rank == 0:
        sink.log_params({"trainable_parameters": trainable, "frozen_parameters": total - trainable})
    return _Run(
        job,
        family,
        engine,
        optimizer,
        scheduler,
        [g["lr"] for g in groups],
        rank,
        world,
        rows,
        dev_rows,
        total_steps,
        sink,
        n_micro=n_micro,
    )


def _without_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory all-reduce op.

    It serves DeepSpeed's inference all-reduce only (ZeRO training reduces over gloo), yet the
    CPU backend builds it with g++ when it starts: 27 s on this 2-core machine in every new
    environment (the build is cached per torch install path), about a second to load after.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _resume(run: _Run, checkpoint) -> None:
    if checkpoint is None:
        return
    with checkpoint.as_directory() as d:
        run.engine.load_checkpoint(
            os.path.join(d, DS_TAG), tag=DS_TAG, load_module_strict=not run.family.frozen_backbone
        )
        with open(os.path.join(d, "state.json")) as f:
            run.state = LoopState(**json.load(f))
    run.state.resumed_from_step = run.state.step
    run.counting_epoch = run.state.epoch
    # A crash between a best export and its checkpoint: best.json names a better epoch than
    # the checkpoint knows; keep comparing against it.
    best_uri = storage.join(run.job.train.output, BEST)
    if storage.exists(best_uri):
        recorded = storage.read_json(best_uri).get("key")
        if recorded is not None and (run.state.best_key is None or tuple(recorded) > tuple(run.state.best_key)):
            run.state.best_key = recorded
    if run.rank == 0:
        s = run.state
        print(f"[train] resumed from step {s.step} (epoch {s.epoch}, micro-batch {s.micro_done})", flush=True)


def _finished(run: _Run) -> bool:
    return run.state.step >= run.total_steps or run.state.stopped_early


def _trainable(run: _Run, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The examples of one micro-batch that train; the rows a family cannot train on are counted."""
    out = []
    for example in examples:
        if "skip" in example:
            if run.state.epoch == run.counting_epoch:
                run.skipped.add(example["skip"], example.get("id"))
            continue
        out.append(example)
    return out


def _train_epoch(run: _Run) -> None:
    train, state, engine = run.job.train, run.state, run.engine
    engine.train()
    window: list[dict[str, float]] = []
    fallback: list[dict[str, Any]] | None = None
    for index, transformed in enumerate(run.rows.epoch(state.epoch, state.micro_done), start=state.micro_done):
        if index >= run.n_micro:
            break
        boundary, group_size = accumulation(index, run.n_micro, train.grad_accum)
        examples = _trainable(run, transformed)
        weight = 1.0
        if not examples:  # every row skipped: run the last good batch at weight 0 (equal forwards)
            examples, weight = fallback or _first_trainable(run), 0.0
        fallback = examples
        engine.set_gradient_accumulation_boundary(boundary)
        loss, parts = run.family.loss(engine, run.family.collate(examples))
        # The mean over the step's micro-batches, however many the step has.
        engine.backward(loss * (weight / group_size), scale_wrt_gas=False)
        engine.step()
        state.micro_done = index + 1
        window.append(parts)
        for k, v in parts.items():
            total, n = run.epoch_losses.get(k, (0.0, 0))
            run.epoch_losses[k] = (total + v, n + 1)
        if not boundary:
            continue
        state.step += 1
        _maybe_inject_fault(train, state.step, run.rank, run.world)
        if state.step % train.log_every == 0 or state.step == run.total_steps:
            _log_steps(run, window)
            window = []
        if train.checkpoint_every and state.step % train.checkpoint_every == 0 and state.step < run.total_steps:
            _save(run, {"step": state.step, "epoch": state.epoch})
        if state.step >= run.total_steps:
            break


def _first_trainable(run: _Run) -> list[dict[str, Any]]:
    """A row that trains, to stand in (at weight 0) for a micro-batch whose rows all skip."""
    import pyarrow.parquet as pq

    from sentiray.data import schema

    columns = list(run.family.columns) if run.family.columns else None
    for uri in schema.split_uris(run.family.data_uri(), "train"):
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            for row in pq.read_table(f, columns=columns).to_pylist():
                example = run.family.transform(row)
                if "skip" not in example:
                    return [example]
    raise schema.DataError(f"no train row of {run.family.data_uri()} can be trained on: {run.skipped.counts}")


def _log_steps(run: _Run, window: list[dict[str, float]]) -> None:
    state, train = run.state, run.job.train
    metrics = _mean_over_ranks(window, run.world)
    metrics.update(lr=run.optimizer.param_groups[0]["lr"], epoch=state.epoch)
    now = time.perf_counter()
    since, at_step = run.last_log or (run.start_time, state.resumed_from_step or 0)
    run.last_log = (now, state.step)
    # the rate since the last log: start-up (first batches, compilation) does not blur it
    metrics["samples_per_s"] = (state.step - at_step) * train.batch_size * train.grad_accum * run.world / (now - since)
    run.sink.log(metrics, state.step)
    if run.rank == 0:
        eta = (run.total_steps - state.step) * (now - since) / max(1, state.step - at_step)
        print(
            f"[train] step {state.step}/{run.total_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
            f"{metrics['samples_per_s']:.1f} samples/s ETA {eta:.0f}s",
            flush=True,
        )
        storage.write_json(
            storage.join(train.output, PROGRESS),
            {
                "step": state.step,
                "total": run.total_steps,
                "epoch": state.epoch,
                "loss": metrics["loss"],
                "samples_per_s": metrics["samples_per_s"],
                "dev": run.last_dev,
            },
        )


def _end_epoch(run: _Run) -> None:
    """Dev metrics, best export, plateau, early stopping, checkpoint (also when max_steps ended
    the epoch early)."""
    train, state, family = run.job.train, run.state, run.family
    # unweighted parts, so that sweeps compare them across loss-weight values
    means = {k: total / n for k, (total, n) in run.epoch_losses.items()}
    losses = {f"train_{k}": v for k, v in _mean_over_ranks([means], run.world).items()}
    run.epoch_losses = {}
    dev = evaluate_dev(family, run.engine.module, run.dev_rows, run.rank, run.world, train.eval_batch_size)
    selection = family.selection()
    state.epoch += 1
    state.micro_done = 0
    run.last_dev = {selection.metric: dev[selection.metric]}
    is_best = selection.better(dev, state.best_key)
    if is_best:
        state.best_key, state.best_epoch, state.bad_epochs = list(selection.key(dev)), state.epoch, 0
        _export_best(run, dev)
    else:
        state.bad_epochs += 1
    if train.scheduler == "plateau" and plateau_step(state, dev[selection.metric], selection.mode, train.plateau):
        floor = train.plateau.min_lr / max(run.base_lrs)
        state.lr_scale = max(state.lr_scale * train.plateau.factor, floor)
        _apply_lr_scale(run.optimizer, run.scheduler, run.base_lrs, state.lr_scale)
    if train.early_stopping_patience and state.bad_epochs >= train.early_stopping_patience:
        state.stopped_early = True
    skipped = _skipped_report(run) if state.epoch - 1 == run.counting_epoch else {}
    run.sink.log({**dev, "epoch": state.epoch, **skipped}, state.step)
    if run.rank == 0:
        marks = " (best)" if is_best else ""
        marks += "; stopping early" if state.stopped_early else ""
        print(f"[train] epoch {state.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in dev.items()) + marks, flush=True)
    trained = (state.step - (state.resumed_from_step or 0)) * train.batch_size * train.grad_accum * run.world
    _save(
        run,
        {
            "step": state.step,
            "epoch": state.epoch,
            **dev,
            **losses,
            "is_best": is_best,
            "best_epoch": state.best_epoch,
            "resumed_from_step": state.resumed_from_step if state.resumed_from_step is not None else -1,
            "samples_per_s": trained / (time.perf_counter() - run.start_time),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    )


def _skipped_report(run: _Run) -> dict[str, float]:
    """Rows left out of training (summed over ranks), printed once with a few ids."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for part in _all_gather(asdict(run.skipped), run.world):
        for reason, n in part["counts"].items():
            counts[reason] = counts.get(reason, 0) + n
            examples.setdefault(reason, []).extend(part["examples"].get(reason, []))
    if counts and run.rank == 0:
        for reason, n in counts.items():
            print(
                f"[train] warning: {n} train row(s) skipped: {reason} (e.g. {', '.join(examples[reason][:3])})",
                flush=True,
            )
    run.skipped = Skipped()
    return {"rows_skipped": float(sum(counts.values()))}


# --------------------------------------------------------------------------- checkpoints and exports


def _save(run: _Run, metrics: dict[str, Any]) -> None:
    """Every rank writes its DeepSpeed shards; rank 0 adds the loop state."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="sentiray-ckpt-") as tmp:
        run.engine.save_checkpoint(
            os.path.join(tmp, DS_TAG), tag=DS_TAG, exclude_frozen_parameters=run.family.frozen_backbone
        )
        if run.rank == 0:
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(asdict(run.state), f)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _export_best(run: _Run, dev: dict[str, float]) -> None:
    """Write the model of a new best epoch; under ZeRO-3 every rank gathers, rank 0 writes."""
    engine, family = run.engine, run.family
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(family.export_parameters(engine.module), modifier_rank=None):
            if run.rank == 0:
                _write_export(run, dev)
    elif run.rank == 0:
        _write_export(run, dev)
    if dist.is_initialized() and run.world > 1:
        dist.barrier()  # the export exists before any rank reports this epoch


def _write_export(run: _Run, dev: dict[str, float]) -> None:
    from sentiray import families

    out = run.job.train.output
    state = run.state
    name = f"epoch-{state.epoch:03d}-step-{state.step:06d}"
    uri = storage.join(out, EXPORTS, name)
    tmp = tempfile.mkdtemp(prefix="sentiray-export-")
    try:
        run.family.export(run.engine.module, tmp)
        families.write_manifest(
            tmp, {**run.family.manifest(), "epoch": state.epoch, "step": state.step, "dev": dev}, type(run.family)
        )
        storage.remove(uri, recursive=True)
        storage.upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best_uri = storage.join(out, BEST)
    previous = storage.read_json(best_uri).get("export") if storage.exists(best_uri) else None
    storage.write_json(
        best_uri,
        {
            "export": uri,
            "epoch": state.epoch,
            "step": state.step,
            "metrics": dev,
            "key": state.best_key,
            "selection": [list(k) for k in run.family.selection().keys],
        },
    )
    if previous and previous != uri:
        storage.remove(previous, recursive=True)
