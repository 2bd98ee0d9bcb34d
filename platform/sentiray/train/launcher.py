"""Stage ``train``: the Ray Train driver.

Builds a TorchTrainer around :func:`sentiray.train.loop.train_func`, runs it, copies the best
epoch's export (``train.output/best.json`` names it) to ``train.output/model`` and registers it
in MLflow as a pyfunc of its family.

Idempotent: a finished output (``_SUCCESS.json``) is not retrained; an interrupted run
resumes from its latest checkpoint when the same command is rerun (Ray Train restores
the run named ``ray`` under ``train.output``), and from worker failures within a run
(``train.max_failures``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from sentiray import config as config_mod
from sentiray import families, runtime, tracking
from sentiray.config import JobConfig
from sentiray.data import storage

SUCCESS = "_SUCCESS.json"
RUN_NAME = "ray"


def absolute(cfg: JobConfig) -> JobConfig:
    """The config with every path resolved, so workers (other processes, other machines)
    read the same places as the driver."""
    raw = cfg.model_dump(mode="json")

    def fix(uri: str | None) -> str | None:
        if uri is None:
            return None
        uri = cfg.resolve(uri)
        return uri if storage.is_remote(uri) or uri.startswith("models:/") else os.path.abspath(uri)

    raw["train"]["output"] = fix(raw["train"]["output"])
    raw["model"]["path"] = fix(raw["model"]["path"])
    if raw.get("data"):
        raw["data"]["input"] = fix(raw["data"].get("input") or raw["data"]["output"])
    if raw.get("distill"):
        raw["distill"]["teacher_path"] = fix(raw["distill"]["teacher_path"])
    for dotted in families.family_class(cfg.train.family).path_fields:  # e.g. lrsa.vision_model
        section, key = dotted.split(".", 1)
        if raw.get(section) and raw[section].get(key):
            raw[section][key] = fix(raw[section][key])
    raw["storage"]["root"] = fix(".") if not storage.is_remote(cfg.storage.root) else cfg.storage.root
    return config_mod.validate(raw, source="train (resolved)")


def _resolve_model_uris(cfg: JobConfig) -> JobConfig:
    """``models:/`` sources become local folders on the driver (workers share the disk
    locally; on a cluster use s3:// or a shared path)."""
    from sentiray.models.registry import resolve_model_uri

    raw = cfg.model_dump(mode="json")
    changed = False
    for section, key in (("model", "path"), ("distill", "teacher_path")):
        if raw.get(section) and str(raw[section][key]).startswith(("models:/", "runs:/")):
            raw[section][key] = resolve_model_uri(raw[section][key])
            changed = True
    return config_mod.validate(raw, source="train (models resolved)") if changed else cfg


def prepare(cfg: JobConfig) -> JobConfig:
    """The config as workers must see it: paths absolute, ``models:/`` sources local."""
    return _resolve_model_uris(absolute(cfg))


def run(cfg: JobConfig) -> dict[str, Any]:
    cfg = prepare(cfg)
    train = cfg.train
    out = train.output
    done_uri = storage.join(out, SUCCESS)
    if storage.exists(done_uri):
        summary = storage.read_json(done_uri)
        print(f"train: {out} is complete (best {summary.get('metric')}={summary.get('best')}); skipped")
        return {**summary, "skipped": True}
    family = families.create(cfg)
    family.check()  # bad data or settings fail here, before Ray starts

    runtime.ensure_ray(cfg.ray, need_cpus=_cpus(cfg))
    with tracking.stage_run(cfg, family.run_name()) as run:
        mlflow_info = None
        if run is not None:
            mlflow_info = {"tracking_uri": tracking.tracking_uri(cfg.tracking), "run_id": run.info.run_id}
        summary, _ = fit(cfg, family, mlflow_info)
        if run is not None:
            _log_results(cfg, family, summary, run.info.run_id)
        storage.write_json(done_uri, summary)  # written last: the output is complete
    print(f"train: best {summary['metric']}={summary['best']:.4f}; model at {summary['model']}")
    return summary


def _cpus(cfg: JobConfig) -> tuple[float, str]:
    """The CPUs a run holds at once, and how they add up (for :func:`runtime.ensure_ray`)."""
    from sentiray.train import data

    t = cfg.train
    need = t.num_workers * t.cpus_per_worker
    what = f"train: {t.num_workers} worker(s) x {t.cpus_per_worker:g} CPU (train.num_workers, train.cpus_per_worker)"
    if t.stream:
        need += data.data_cpus(t)
        what += f" + {data.data_cpus(t):g} for the streamed input (train.data_workers x train.data_cpus + a read)"
    return need, what


POLL_ENV, POLL_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"  # passed on to the controller by Ray


def fit(
    cfg: JobConfig,
    family: families.Family,
    mlflow_info: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
    train_loop: Callable[[dict[str, Any]], None] | None = None,
):
    """Train a :func:`prepare`-d config on Ray Train and export the best model to
    ``train.output/model``; returns (summary, Ray Train result).

    The body of the ``train`` stage, also run inside each Tune trial (the Train V2
    "driver function" pattern), which adds a callback forwarding reports to Tune.
    ``mlflow_info`` ({"tracking_uri", "run_id"}) is the run rank 0 logs metrics into;
    ``train_loop`` replaces the worker entry point (a trial wraps the shared loop).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from sentiray.train.loop import train_func

    train = cfg.train
    out = train.output
    # Ray Train's controller polls its workers every 2 s by default, and a run's start and end
    # each take a few polls: about 4 s of every run spent waiting (measured on the demo's MSE
    # train stage: 5.6 s from the last report to the result, 1.4 s at 0.25 s). A poll is one
    # small RPC per worker; set the variable to keep Ray's default.
    os.environ.setdefault(POLL_ENV, POLL_INTERVAL_S)
    if storage.is_remote(out):
        fs, path = storage.pyarrow_filesystem(out)
        storage_kwargs = {"storage_path": path, "storage_filesystem": fs}
    else:
        storage_kwargs = {"storage_path": out}
    streamed = {}
    if train.stream:
        from sentiray.train import data

        streamed = {
            "datasets": {data.DATASET: data.train_dataset(cfg, family)},
            "dataset_config": data.dataset_config(),
        }
    trainer = TorchTrainer(
        train_loop or train_func,
        train_loop_config={"job": cfg.model_dump(mode="json"), "mlflow": mlflow_info},
        **streamed,
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})},
            placement_strategy=train.placement,
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            failure_config=FailureConfig(max_failures=train.max_failures),
            # The latest checkpoints, for resume only: the best epoch's model is exported by the
            # loop itself (best.json), so no mid-epoch checkpoint can ever displace it.
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            worker_runtime_env={"env_vars": _worker_env(train.use_gpu)},
            callbacks=list(callbacks or []),
            **storage_kwargs,
        ),
    )
    with _progress_bar(out, family.run_name()):
        result = trainer.fit()
    if result.error:
        raise result.error
    return _finish(cfg, family, result, out), result


@contextlib.contextmanager
def _progress_bar(out: str, name: str):
    """While training runs: a bar on the terminal fed by rank 0's progress file (quiet mode
    only; otherwise the workers' own step lines show the progress)."""
    from sentiray import console
    from sentiray.train.loop import PROGRESS

    if not console.is_quiet():
        yield
        return
    uri = storage.join(out, PROGRESS)
    storage.remove(uri)
    stop = threading.Event()

    def poll() -> None:
        bar = None
        while True:
            stopping = stop.wait(1.0)
            try:
                p = storage.read_json(uri)
            except (FileNotFoundError, ValueError):
                p = None
            if p is not None:
                if bar is None:
                    bar = console.progress(p["total"], name, unit="step")
                bar.n = p["step"]
                dev = "".join(f", {k} {v:.3f}" for k, v in (p.get("dev") or {}).items())
                bar.set_postfix_str(
                    f"epoch {p['epoch'] + 1}, loss {p['loss']:.3f}, {p['samples_per_s']:.1f} samples/s{dev}"
                )
            if stopping:
                break
        if bar is not None:
            bar.close()

    thread = threading.Thread(target=poll, name="sentiray-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _worker_env(use_gpu: bool) -> dict[str, str]:
    env = runtime.passthrough_env()
    if use_gpu:
        # Measured on an H100 (bench/results/gpu_check_h100.md): a 3B model at ZeRO-2 ran out
        # of memory from fragmentation alone; expandable segments fixed it.
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


def _finish(cfg: JobConfig, family: families.Family, result, out: str) -> dict[str, Any]:
    from sentiray.train.loop import BEST, EXPORTS

    best_uri = storage.join(out, BEST)
    if not storage.exists(best_uri):
        raise RuntimeError(f"training ended without a best epoch export ({best_uri} missing)")
    best = storage.read_json(best_uri)
    model_uri = storage.join(out, "model")
    storage.remove(model_uri, recursive=True)
    storage.copy_dir(best["export"], model_uri)
    storage.remove(storage.join(out, EXPORTS), recursive=True)
    selection = family.selection()
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return {
        "metric": selection.metric,
        "best": float(best["metrics"][selection.metric]),
        "best_metrics": best["metrics"],
        "best_step": int(best["step"]),
        "best_epoch": int(best["epoch"]),
        "stopped_early": bool(
            final.get("epoch", cfg.train.epochs) < cfg.train.epochs
            and final.get("step", 0) < (cfg.train.max_steps or 10**12)
        ),
        "final": final,
        "model": model_uri,
        "checkpoint": checkpoint,
        "registered_model": None,
    }


# Step metrics that are not losses (left out of the loss plot).
_NOT_LOSSES = {"lr", "epoch", "step", "samples_per_s", "rows_skipped"}


def _log_results(cfg: JobConfig, family: families.Family, summary: dict[str, Any], run_id: str) -> None:
    import mlflow

    from sentiray.evaluate import plots
    from sentiray.models import registry

    tracking.log_metrics({f"best_{summary['metric']}": summary["best"], "best_step": summary["best_step"]})
    client = mlflow.MlflowClient()
    keys = sorted(client.get_run(run_id).data.metrics)
    losses = [k for k in keys if not k.startswith(("dev_", "best_")) and k not in _NOT_LOSSES]
    series = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in losses}
    if any(series.values()):
        fig = plots.curves(series, f"{family.run_name()}: training loss", "loss")
        tracking.log_figure(fig, "plots/loss.png")
        plots.close(fig)
    dev = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys if k.startswith("dev_")}
    if any(dev.values()):
        fig = plots.curves(dev, f"{family.run_name()}: dev metrics", "score")
        tracking.log_figure(fig, "plots/dev.png")
        plots.close(fig)
    name = cfg.train.register_as or family.registered_name()
    info = registry.log_model(summary["model"], name="model", registered_name=name)
    summary["registered_model"] = f"models:/{name}/{info.registered_model_version}"
    tracking.log_json(summary, "train/summary.json")
