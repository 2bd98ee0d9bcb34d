"""Stage ``tune``: hyperparameter sweeps of the training stage on Ray Tune.

A sweep job is a training job (``data``, ``model``, ``train``, ``distill``) plus ``tune:``
(search space, searcher, scheduler). Each Tune trial applies its sampled values to the
training job as ``a.b=value`` overrides and runs the ``train`` stage's Ray Train run
inside the trial (the Train V2 "driver function" pattern: Tune trial -> TorchTrainer.fit).
A Train callback forwards each epoch-end report to Tune, so one Tune iteration is one
epoch and ASHA can stop a poor trial after any epoch.

Layout under ``tune.output``::

    ray/                    Tune's experiment state (what a rerun restores)
    trials/<trial id>/      the trial's training output (Ray Train run, model, _epochs.json)
    best.yaml               the best trial's config, a complete ``stage: train`` job
    _sweep.json             the sweep's MLflow run id (so a resumed sweep logs into it)
    _SUCCESS.json           the summary, written last: the sweep is complete

MLflow: a parent run for the sweep (params, the trial table, plots, best config) and a
child run per trial (its config as params, its metric history).

Resume: rerunning the same command continues an interrupted sweep (``tune.resume: auto``;
``tune.resume=true`` insists on resuming): Tune restores its experiment, finished trials
stay finished, and an interrupted trial restarts in its own output, where Ray Train
resumes it from its latest checkpoint, logging into the MLflow run it started.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from sentiray import config as config_mod
from sentiray import families, runtime, tracking
from sentiray.config import ConfigError, JobConfig
from sentiray.data import storage
from sentiray.sweep import seeds, space
from sentiray.train import launcher

SUCCESS = "_SUCCESS.json"
STATE = "_sweep.json"
EXPERIMENT = "ray"
TRIALS = "trials"
EPOCHS = "_epochs.json"
PLACEMENT_GROUPS = "_placement_groups.json"
TRIAL_TAG = "sentiray.tune.trial_id"
# The Tune iteration: the loop reports the number of finished epochs at every epoch end.
TIME_ATTR = "epoch"


@dataclass
class Sweep:
    """A validated sweep: everything decided before Ray starts."""

    cfg: JobConfig  # as written (relative paths kept: best.yaml reuses them)
    resolved: JobConfig  # paths absolute, as trials need them
    output: str  # tune.output, resolved
    max_t: int  # epochs of each trial

    @property
    def experiment_path(self) -> str:
        return storage.join(self.output, EXPERIMENT)

    def trial_output(self, trial_id: str) -> str:
        return storage.join(self.output, TRIALS, trial_id)


# --------------------------------------------------------------------------- planning (no Ray)


def plan(cfg: JobConfig) -> Sweep:
    """Validate everything a sweep needs, before Ray starts; bad config raises ConfigError."""
    if cfg.stage != "tune" or cfg.tune is None:
        raise ConfigError(f"the tune stage runs 'stage: tune' jobs with a tune section, got stage {cfg.stage!r}")
    tune_cfg = cfg.tune
    max_t = tune_cfg.max_t or cfg.train.epochs
    if tune_cfg.scheduler == "asha" and tune_cfg.grace_period > max_t:
        raise ConfigError(
            f"invalid config: tune.grace_period ({tune_cfg.grace_period}) > the epochs of a trial "
            f"({max_t}, tune.max_t or train.epochs): ASHA could never stop a trial"
        )
    base = cfg.model_dump(mode="json")
    base["train"]["epochs"] = max_t
    space.check_fields(tune_cfg.search_space, base)
    resolved = launcher.prepare(cfg)
    family = families.create(
        config_mod.validate(
            {**resolved.model_dump(mode="json"), "stage": "train", "tune": None}, source="tune (base training job)"
        )
    )
    if not tune_cfg.metric.startswith(("dev_", "train_")):
        raise ConfigError(
            f"invalid config: tune.metric {tune_cfg.metric!r} is not reported at epoch ends; use a dev "
            "metric of the family (dev_accuracy, dev_MAE, ...), or an epoch's mean training loss such "
            "as 'train_ce_l'"
        )
    family.check()  # missing data, a student without distill, ... fail here
    output = resolved.resolve(tune_cfg.output)
    if not storage.is_remote(output):
        output = os.path.abspath(output)
    return Sweep(cfg=cfg, resolved=resolved, output=output, max_t=max_t)


TRAINER_CPUS = 1.0


def trial_resources(cfg: JobConfig) -> dict[str, float]:
    """What one trial holds: its driver (the Tune trial) plus its Ray Train workers.

    Ray Train V2 places its workers in a placement group of its own, outside the Tune
    trial's, so Tune reserves only the driver (``tune.trial_cpus``) and the workers are
    counted here to decide how many trials fit at once.
    """
    train = cfg.train
    # Train's placement group: a bundle for its trainer (1 CPU, seen in `ray list placement-groups`:
    # bundles [1.0, 1.0] for a one-worker trial) and one per worker.
    need = {"CPU": cfg.tune.trial_cpus + TRAINER_CPUS + train.num_workers * train.cpus_per_worker}
    if train.stream:
        # the trial's Ray Data pipeline: its transform actors and a read task. Without them in
        # the count, trials that fill the cluster leave Ray Data no CPU and every trial waits
        # for its first batch for ever (seen: 4/4 CPUs held by placement groups, 0.25-CPU actors pending).
        from sentiray.train.data import data_cpus

        need["CPU"] += data_cpus(train)
    if train.use_gpu:
        need["GPU"] = float(train.num_workers)
    return need


def max_concurrent(cfg: JobConfig, cluster: dict[str, float]) -> int:
    """``tune.max_concurrent_trials``, else as many trials as the cluster's resources hold."""
    need = trial_resources(cfg)
    fits = min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    if fits < 1:
        raise ConfigError(
            f"one trial needs {need} (tune.trial_cpus + Train's trainer + train.num_workers x train.cpus_per_worker + its "
            f"streamed input) but the cluster "
            f"has {dict((k, cluster.get(k, 0.0)) for k in need)}: lower them, or set tune.max_concurrent_trials "
            "on an autoscaling cluster"
        )
    return fits


def _pyarrow_fs(uri: str) -> tuple[Any, str]:
    if storage.is_remote(uri):
        return storage.pyarrow_filesystem(uri)
    return None, uri


def _should_restore(sweep: Sweep) -> bool:
    from ray.tune import Tuner

    fs, path = _pyarrow_fs(sweep.experiment_path)
    found = Tuner.can_restore(path, storage_filesystem=fs)
    mode = sweep.cfg.tune.resume
    if mode is True and not found:
        raise ConfigError(f"tune.resume is true but {sweep.experiment_path} holds no sweep to resume")
    if mode is False and found:
        raise ConfigError(
            f"tune.output {sweep.output} already holds a sweep: rerun with tune.resume=auto to continue "
            "it, or choose another tune.output"
        )
    return found


# --------------------------------------------------------------------------- the stage


def run(cfg: JobConfig) -> dict[str, Any]:
    sweep = plan(cfg)
    done_uri = storage.join(sweep.output, SUCCESS)
    if storage.exists(done_uri):
        summary = storage.read_json(done_uri)
        print(f"tune: {sweep.output} is complete (best {summary['metric']}={summary['best']}); skipped")
        return {**summary, "skipped": True}
    restore = _should_restore(sweep)

    runtime.ensure_ray(cfg.ray)
    import ray

    concurrency = max_concurrent(cfg, ray.cluster_resources())
    start = time.perf_counter()
    with _sweep_run(sweep) as parent:
        mlflow_info = None
        if parent is not None:
            mlflow_info = {"tracking_uri": tracking.tracking_uri(cfg.tracking), "run_id": parent.info.run_id}
        print(
            f"tune: {'resuming' if restore else 'starting'} sweep at {sweep.output}: {cfg.tune.searcher} search, "
            f"{cfg.tune.scheduler} scheduler, {cfg.tune.num_samples} sample(s), up to {concurrency} trial(s) at once "
            f"({trial_resources(cfg)} each), {sweep.max_t} epoch(s) per trial"
        )
        grid = _fit(sweep, restore, concurrency, mlflow_info)
        summary = report(sweep, grid, parent)
        summary["seconds"] = time.perf_counter() - start
        storage.write_json(done_uri, summary)  # written last: the sweep is complete
    return summary


@contextlib.contextmanager
def _sweep_run(sweep: Sweep) -> Iterator[Any]:
    """The sweep's MLflow run; a resumed sweep reopens the run it started with."""
    cfg = sweep.cfg
    if not cfg.tracking.enabled:
        yield None
        return
    import mlflow

    state_uri = storage.join(sweep.output, STATE)
    state = storage.read_json(state_uri) if storage.exists(state_uri) else {}
    tracking.setup(cfg.tracking)
    run_id = state.get("mlflow_run_id")
    if run_id is not None:
        try:
            mlflow.MlflowClient().get_run(run_id)
        except Exception:  # another MLflow store: start a new run there
            run_id = None
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    with tracking.stage_run(cfg, "tune") as run:
        storage.write_json(
            state_uri, {"mlflow_run_id": run.info.run_id, "tracking_uri": tracking.tracking_uri(cfg.tracking)}
        )
        yield run


def _trial_dirname(trial) -> str:
    """Tune's folder of a trial is its id, as is its training output under trials/."""
    return trial.trial_id


def _fit(sweep: Sweep, restore: bool, concurrency: int, mlflow_info: dict[str, Any] | None):
    from ray import tune

    cfg = sweep.cfg
    t = cfg.tune
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=sweep.resolved.model_dump(mode="json"),
            sweep={
                "output": sweep.output,
                "max_t": sweep.max_t,
                "metric": t.metric,
                "mode": t.mode,
                "mlflow": mlflow_info,
                # Service settings (S3, MLflow) for the trial and its Train workers; passed
                # as parameters, not in the trial config Tune writes to disk.
                "env": runtime.passthrough_env(),
            },
        ),
        {"CPU": t.trial_cpus},
    )
    fs, path = _pyarrow_fs(sweep.experiment_path)
    if restore:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    else:
        fs_out, out_path = _pyarrow_fs(sweep.output)
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(t.search_space, t.searcher),
            tune_config=tune.TuneConfig(
                metric=t.metric,
                mode=t.mode,
                num_samples=t.num_samples,
                search_alg=_searcher(cfg, concurrency),
                scheduler=_scheduler(cfg, sweep.max_t),
                # Tune wraps a Searcher in a ConcurrencyLimiter; the basic generator
                # takes its limit itself (Tune ignores this one when it is given).
                max_concurrent_trials=concurrency if t.searcher == "optuna" else None,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=out_path,
                storage_filesystem=fs_out,
                callbacks=[ReleaseTrainResources(sweep.output)],
            ),
        )
    return tuner.fit()


def _searcher(cfg: JobConfig, concurrency: int):
    t = cfg.tune
    if t.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=t.seed)  # TPE; metric and mode come from TuneConfig
    from ray.tune.search import BasicVariantGenerator

    # random and grid (grid entries are grid_search, sampled ones are drawn)
    return BasicVariantGenerator(max_concurrent=concurrency, random_state=t.seed)


def _scheduler(cfg: JobConfig, max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    if t.scheduler == "fifo":
        return FIFOScheduler()
    # stop_last_trials=False: a trial that reaches max_t ends by itself, so it exports its
    # model and marks its output complete instead of being killed mid-export.
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=max_t,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
        stop_last_trials=False,
    )


# --------------------------------------------------------------------------- one trial


class ReleaseTrainResources(Callback):
    """Tune callback (on the sweep driver): free a finished trial's Ray Train placement group.

    Ray Train V2 places a trial's workers in a placement group of its own, which lives as
    long as the job (the sweep driver), not the trial. When ASHA stops a trial, Tune kills
    the trial actor, and with it the Train controller that would have removed the group:
    its CPUs would stay reserved for the rest of the sweep and the next trials could never
    start (ray-project/ray#54305). Ray's own safety net (the PlacementGroupCleaner actor)
    needs the State API, i.e. a dashboard, which a local or test cluster may not run. So
    each trial's rank-0 worker records its group (:func:`trial_train_func`), and this
    callback removes the groups of every trial that ends (a no-op for groups the Train
    run already removed).
    """

    def __init__(self, output: str) -> None:
        self.output = output

    def on_trial_complete(self, iteration, trials, trial, **info):
        release_placement_groups(self.output, trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        release_placement_groups(self.output, trial.trial_id)


def release_placement_groups(output: str, trial_id: str) -> int:
    """Remove the placement groups a trial's Train runs recorded; returns how many."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    uri = storage.join(output, TRIALS, trial_id, PLACEMENT_GROUPS)
    recorded = storage.read_json(uri) if storage.exists(uri) else []
    for pg_hex in recorded:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_hex))))
    return len(recorded)


def trial_train_func(config: dict[str, Any]) -> None:
    """Ray Train worker entry point of a trial: record the worker group's placement group
    (for :class:`ReleaseTrainResources`), then run the shared training loop."""
    import ray.train
    from ray.util import get_current_placement_group

    from sentiray.train.loop import train_func

    pg = get_current_placement_group()
    if pg is not None and ray.train.get_context().get_world_rank() == 0:
        uri = storage.join(config["job"]["train"]["output"], PLACEMENT_GROUPS)
        known = storage.read_json(uri) if storage.exists(uri) else []
        storage.write_json(uri, [*known, pg.id.hex()])  # one per attempt: a restarted group is a new one
    train_func(config)


def _epoch_reporter(metric: str, max_t: int, history_uri: str):
    """A Ray Train callback forwarding one result per epoch to Tune.

    The loop reports at every epoch end (dev metrics, the epoch's mean training losses
    ``train_loss``, ``train_ce_c``, ..., a checkpoint) and may checkpoint mid-epoch. Tune
    must see one result per epoch carrying the metric, or ASHA would count checkpoints and
    strict metric checking would reject results without it. So only epoch ends are
    forwarded. Each forwarded result is also appended to ``_epochs.json`` in the trial's
    output: its learning curve, kept across restarts.

    The last epoch (``max_t``) is not forwarded here: the trial reports it itself once
    its model is exported, so no scheduler decision can kill a trial mid-export.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReporter(TuneReportCallback):
        def __init__(self) -> None:
            super().__init__()
            self.history = storage.read_json(history_uri) if storage.exists(history_uri) else []
            self.last_epoch = self.history[-1][TIME_ATTR] if self.history else 0

        def after_report(self, run_context, metrics, checkpoint):
            report = metrics[0]  # rank 0's
            # Mid-epoch checkpoints carry the last finished epoch: only an epoch end
            # moves the count forward.
            epoch = report.get(TIME_ATTR)
            if epoch is None or epoch <= self.last_epoch:
                return
            if metric not in report:
                raise ValueError(f"tune.metric {metric!r} is not in the epoch results, which carry {sorted(report)}")
            self.last_epoch = epoch
            self.history.append({k: v for k, v in report.items() if isinstance(v, (int, float))})
            storage.write_json(history_uri, self.history)
            if epoch < max_t:
                super().after_report(run_context, [report], checkpoint)

    return EpochReporter()


def trial_job(base: dict[str, Any], hp: dict[str, Any], trial_id: str, sweep: dict[str, Any]) -> JobConfig:
    """The training job of one trial: the base job, the sampled values, its own output."""
    raw = {**base, "stage": "train", "tune": None, "name": f"{base.get('name') or 'tune'}-{trial_id}"}
    raw = config_mod.apply_overrides(raw, space.overrides(hp))
    raw["train"]["epochs"] = sweep["max_t"]
    raw["train"]["output"] = storage.join(sweep["output"], TRIALS, trial_id)
    mlflow_info = sweep.get("mlflow")
    if mlflow_info is None:
        raw["tracking"] = {**raw["tracking"], "enabled": False}
    else:
        raw["tracking"] = {
            **raw["tracking"],
            "tracking_uri": mlflow_info["tracking_uri"],
            "run_name": f"trial-{trial_id}",
            "parent_run_id": mlflow_info["run_id"],
            "tags": {**raw["tracking"]["tags"], TRIAL_TAG: trial_id},
        }
    return config_mod.validate(raw, source=f"tune trial {trial_id}")


def run_trial(hp: dict[str, Any], base: dict[str, Any] | None = None, sweep: dict[str, Any] | None = None) -> None:
    """The Tune trainable: one training run with the sampled values ``hp``."""
    from ray import tune

    os.environ.update(sweep["env"])
    trial_id = tune.get_context().get_trial_id()
    job = trial_job(base, hp, trial_id, sweep)
    out = job.train.output
    done_uri = storage.join(out, launcher.SUCCESS)
    if storage.exists(done_uri):
        # Finished before the sweep was interrupted, but Tune's state had not caught up:
        # replay the recorded epochs instead of training again.
        for row in storage.read_json(done_uri).get("epochs", []):
            tune.report(row)
        return
    family = families.create(job)
    history_uri = storage.join(out, EPOCHS)
    with _trial_run(job, trial_id) as run:
        mlflow_info = None if run is None else {"tracking_uri": job.tracking.tracking_uri, "run_id": run.info.run_id}
        reporter = _epoch_reporter(sweep["metric"], sweep["max_t"], history_uri)
        summary, _ = launcher.fit(job, family, mlflow_info, callbacks=[reporter], train_loop=trial_train_func)
        summary["epochs"] = storage.read_json(history_uri) if storage.exists(history_uri) else []
        summary["overrides"] = space.overrides(hp)
        if run is not None:
            values = [row[sweep["metric"]] for row in summary["epochs"]]
            if values:
                tracking.log_metrics({f"best_{sweep['metric']}": (max if sweep["mode"] == "max" else min)(values)})
            tracking.log_json(summary, "train/summary.json")
        storage.write_json(done_uri, summary)  # the trial is complete
    last = summary["epochs"][-1] if summary["epochs"] else None
    if last is not None and last[TIME_ATTR] >= sweep["max_t"]:
        tune.report(last)  # the final epoch, held back by the reporter until the model was exported


@contextlib.contextmanager
def _trial_run(job: JobConfig, trial_id: str) -> Iterator[Any]:
    """The trial's MLflow run, nested under the sweep's; a trial restarted after an
    interruption continues the run it started."""
    if not job.tracking.enabled:
        yield None
        return
    import mlflow

    tracking.setup(job.tracking)
    found = _child_runs(mlflow.MlflowClient(), job.tracking.experiment, job.tracking.parent_run_id, trial_id)
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id) as run:
            yield run
    else:
        with tracking.stage_run(job, "tune-trial") as run:
            yield run


def _child_runs(client, experiment: str, parent_run_id: str, trial_id: str | None = None) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'"
    return client.search_runs([exp.experiment_id], filter_string=query, max_results=10000)


# --------------------------------------------------------------------------- results


def _trial_rows(sweep: Sweep, grid) -> list[dict[str, Any]]:
    """One row per trial: fate, epochs trained, best and final metric, sampled values."""
    t = sweep.cfg.tune
    pick = max if t.mode == "max" else min
    rows = []
    for result in grid:
        trial_id = os.path.basename(str(result.path).rstrip("/"))
        out = sweep.trial_output(trial_id)
        history = storage.read_json(storage.join(out, EPOCHS)) if storage.exists(storage.join(out, EPOCHS)) else []
        values = [(row[TIME_ATTR], row[t.metric]) for row in history if t.metric in row]
        if result.error is not None:
            status = "error"
        elif storage.exists(storage.join(out, launcher.SUCCESS)):
            status = "completed"
        elif values:
            status = "early_stopped"
        else:
            status = "not_run"
        best = pick(values, key=lambda p: p[1]) if values else None
        rows.append(
            {
                "trial": trial_id,
                "status": status,
                "epochs": values[-1][0] if values else 0,
                "best": best[1] if best else None,
                "best_epoch": best[0] if best else None,
                "final": values[-1][1] if values else None,
                "curve": values,
                "hp": {k: space._plain(result.config.get(k)) for k in t.search_space},
                "output": out,
                "error": None if result.error is None else str(result.error).splitlines()[0][:200],
            }
        )
    # sorted by the metric, best first; trials without a value last
    sign = -1 if t.mode == "max" else 1
    rows.sort(key=lambda r: (r["best"] is None, sign * (r["best"] or 0.0), r["trial"]))
    return rows


def format_table(rows: list[dict[str, Any]], metric: str, params: list[str]) -> str:
    """The trials as an aligned text table, best first."""
    head = ["trial", "status", "epochs", f"best {metric}", "at epoch", "final", *params]
    body = []
    for r in rows:
        body.append(
            [
                r["trial"],
                r["status"],
                str(r["epochs"]),
                "-" if r["best"] is None else f"{r['best']:.4f}",
                "-" if r["best_epoch"] is None else str(r["best_epoch"]),
                "-" if r["final"] is None else f"{r['final']:.4f}",
                *[_short(r["hp"][p]) for p in params],
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_config_yaml(sweep: Sweep, row: dict[str, Any], parent_run_id: str | None) -> str:
    """The best trial's job as a ``stage: train`` YAML: the sweep's own sections (paths as
    written), the best values applied, the trial's number of epochs."""
    import yaml

    cfg = sweep.cfg
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw.pop("tune", None)
    raw["stage"] = "train"
    raw["name"] = f"{cfg.name or 'tune'}-best"
    raw["train"]["epochs"] = sweep.max_t
    raw = config_mod.apply_overrides(raw, space.overrides(row["hp"]))
    raw["tracking"] = {k: v for k, v in raw.get("tracking", {}).items() if k not in ("parent_run_id", "run_name")}
    config_mod.validate(raw, source="best trial config")  # it must train as written
    header = [
        f"# Best trial of the sweep {cfg.name or sweep.output}: {row['trial']}",
        f"#   {cfg.tune.metric} = {row['best']:.4f} at epoch {row['best_epoch']} ({cfg.tune.mode}), "
        f"{row['status']}, model at {row['output']}/model",
        f"#   values: {', '.join(space.overrides(row['hp']))}",
    ]
    if parent_run_id:
        header.append(f"#   MLflow sweep run {parent_run_id}")
    header.append("# Train it: sentiray train <this file>   (or `sentiray run`; add key.sub=value overrides)")
    return "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False)


def report(sweep: Sweep, grid, parent) -> dict[str, Any]:
    """Table (printed and logged), plots, best config, child run fates; returns the summary."""
    t = sweep.cfg.tune
    rows = _trial_rows(sweep, grid)
    params = list(t.search_space)
    table = format_table(rows, t.metric, params)
    print(f"\ntune: {len(rows)} trials, best first\n{table}\n")
    ranked = [r for r in rows if r["best"] is not None]
    if not ranked:
        errors = "; ".join(f"{r['trial']}: {r['error']}" for r in rows if r["error"])
        raise RuntimeError(f"no trial of the sweep reported {t.metric!r}; errors: {errors or 'none'}")
    best = ranked[0]
    best["is_best"] = True
    for r in rows:
        r.setdefault("is_best", False)

    best_yaml = best_config_yaml(sweep, best, parent.info.run_id if parent is not None else None)
    best_uri = storage.join(sweep.output, "best.yaml")
    storage.write_text(best_uri, best_yaml)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "early_stopped", "error", "not_run")}
    summary = {
        "output": sweep.output,
        "experiment": sweep.experiment_path,
        "metric": t.metric,
        "mode": t.mode,
        "best": best["best"],
        "best_trial": best["trial"],
        "best_epoch": best["best_epoch"],
        "best_overrides": space.overrides(best["hp"]),
        "best_model": storage.join(best["output"], "model"),
        "best_config": best_uri,
        "trials": len(rows),
        **counts,
        "trial_epochs": sum(r["epochs"] for r in rows),
        "max_t": sweep.max_t,
        "table": [{k: v for k, v in r.items() if k not in ("curve", "is_best")} for r in rows],
        "mlflow_run_id": parent.info.run_id if parent is not None else None,
    }
    print(
        f"tune: best {t.metric}={best['best']:.4f} (trial {best['trial']}: {', '.join(summary['best_overrides'])}); "
        f"{counts['completed']} completed, {counts['early_stopped']} stopped early, {counts['error']} failed, "
        f"{summary['trial_epochs']} trial-epochs"
    )
    print(f"tune: best config {best_uri}  ->  sentiray train {best_uri}")
    # A seed grid (train.seed swept): mean and std of each dev metric per setting of the rest.
    summary["seeds"] = seeds.aggregate(rows)
    if summary["seeds"]:
        print(f"tune: over seeds (dev metrics at each trial's best epoch)\n{seeds.format_table(summary['seeds'])}")
        storage.write_json(storage.join(sweep.output, "seeds.json"), summary["seeds"])
    if parent is not None:
        _log_sweep(sweep, rows, table, best, best_yaml, summary, parent.info.run_id)
        if summary["seeds"]:
            tracking.log_text(seeds.format_table(summary["seeds"]) + "\n", "tune/seeds.txt")
            tracking.log_json(summary["seeds"], "tune/seeds.json")
    return summary


def _log_sweep(sweep: Sweep, rows, table: str, best, best_yaml: str, summary, parent_run_id: str) -> None:
    import mlflow

    from sentiray.sweep import plots

    t = sweep.cfg.tune
    client = mlflow.MlflowClient()
    tracking.log_metrics(
        {
            f"best_{t.metric}": best["best"],
            "trials": summary["trials"],
            "completed": summary["completed"],
            "early_stopped": summary["early_stopped"],
            "errored": summary["error"],
            "trial_epochs": summary["trial_epochs"],
        }
    )
    tracking.log_text(table + "\n", "tune/trials.txt")
    tracking.log_text(_csv(rows, list(t.search_space)), "tune/trials.csv")
    tracking.log_json({k: v for k, v in summary.items() if k != "table"}, "tune/summary.json")
    tracking.log_text(best_yaml, "best/train.yaml")

    fig = plots.metric_vs_params(
        rows, list(t.search_space), t.metric, {k for k, spec in t.search_space.items() if space.log_scale(spec)}
    )
    tracking.log_figure(fig, "plots/metric_vs_params.png")
    plots.close(fig)
    fig = plots.learning_curves(
        {r["trial"]: r["curve"] for r in rows},
        t.metric,
        {r["trial"] for r in rows if r["status"] == "early_stopped"},
        best["trial"],
    )
    tracking.log_figure(fig, "plots/learning_curves.png")
    plots.close(fig)

    # Child runs: record each trial's fate. A trial stopped by ASHA was interrupted
    # mid-run: its run is left RUNNING (actor killed) or FAILED (the stop surfaced as an
    # exception inside the run's context), depending on timing; either way it is KILLED.
    children = {
        run.data.tags.get(TRIAL_TAG): run for run in _child_runs(client, sweep.cfg.tracking.experiment, parent_run_id)
    }
    for r in rows:
        child = children.get(r["trial"])
        if child is None:
            continue
        run_id = child.info.run_id
        client.set_tag(run_id, "sentiray.tune.status", r["status"])
        if r["best"] is not None:
            client.log_metric(run_id, f"best_{t.metric}", r["best"])
        fate = {"early_stopped": "KILLED", "error": "FAILED"}.get(r["status"], "FINISHED")
        if child.info.status != fate:
            client.set_terminated(run_id, status=fate)
    best_child = children.get(best["trial"])
    mlflow.set_tags(
        {
            "sentiray.tune.best_trial": best["trial"],
            "sentiray.tune.best_config": summary["best_config"],
            **({"sentiray.tune.best_run_id": best_child.info.run_id} if best_child is not None else {}),
        }
    )
    if best_child is not None:
        client.set_tag(best_child.info.run_id, "sentiray.tune.best", "true")
        client.log_text(best_child.info.run_id, best_yaml, "best/train.yaml")


def _csv(rows: list[dict[str, Any]], params: list[str]) -> str:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial", "status", "epochs", "best", "best_epoch", "final", *params])
    for r in rows:
        writer.writerow(
            [
                r["trial"],
                r["status"],
                r["epochs"],
                r["best"],
                r["best_epoch"],
                r["final"],
                *[r["hp"][p] for p in params],
            ]
        )
    return buf.getvalue()
