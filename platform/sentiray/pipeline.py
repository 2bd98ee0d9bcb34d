"""``sentiray pipeline jobs/pipeline.yaml``: the stages in order, each one's output the next one's input.

    sentiray pipeline jobs/pipeline.yaml                               in this process (local Ray)
    sentiray pipeline jobs/pipeline.yaml --address http://HEAD:8265    one Ray job per stage
    sentiray pipeline jobs/pipeline.yaml assistant:train.epochs=1 storage.root=s3://b/run1

A pipeline file lists stages; each names a job YAML (the same files `sentiray run` takes),
its own overrides, and ``inputs``: which of its fields take which earlier stage's output::

    - name: augment
      config: jobs/augment.yaml
      inputs: {data.input: rationales, model.path: assistant}

A stage's output is what the next stage reads: a data set URI (data, rationales, augment),
the exported model folder (train), the report folder (evaluate), the sweep folder (tune).

Every stage config is loaded and validated first, with its inputs filled in, so a wrong field
in the fifth stage fails before the first one starts. Then, in order: a stage whose output is
complete (the marker each stage writes last) is skipped; any other runs. A failed stage stops
the chain with its error; rerunning the same command skips what finished and starts there.
On a cluster the submission id of each job is a hash of its config, so a rerun while a stage's
job is still running attaches to that job instead of starting a second one.

One MLflow parent run per pipeline (kept across reruns, its id in the state file); every stage
run nests under it. The state file ``<storage.root>/_pipelines/<name>.json`` records each
stage's status, output, time and job id.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from sentiray import config
from sentiray.config import (
    ConfigError,
    JobConfig,
    Section,
    StorageConfig,
    TrackingConfig,
)

STATE_DIR = "_pipelines"


# --------------------------------------------------------------------------- the pipeline file


class PipelineStage(Section):
    name: str = Field(description="Unique name of this step; later steps refer to it in their inputs.")
    config: str = Field(description="Job YAML of the stage, relative to the current directory (e.g. jobs/data.yaml).")
    overrides: list[str] = Field(default_factory=list, description="a.b=c overrides for this stage only.")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Config field -> name of an earlier step whose output it takes."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("use letters, digits, '-' and '_' only")
        return v


class PipelineConfig(Section):
    name: str = Field("pipeline", description="Name of the pipeline: MLflow parent run and state file.")
    storage: StorageConfig | None = Field(None, description="Set: storage.root of every stage.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    overrides: list[str] = Field(default_factory=list, description="a.b=c overrides for every stage.")
    stages: list[PipelineStage] = Field(min_length=1)

    @model_validator(mode="after")
    def _wiring(self) -> PipelineConfig:
        seen: set[str] = set()
        for step in self.stages:
            if step.name in seen:
                raise ValueError(f"stage name {step.name!r} is used twice")
            for field, source in step.inputs.items():
                if source not in seen:
                    raise ValueError(
                        f"stage {step.name!r}: input {field} takes {source!r}, which is not an earlier stage"
                    )
            seen.add(step.name)
        return self


# --------------------------------------------------------------------------- what each stage produces


def _absolute(uri: str) -> str:
    """Outputs handed to the next stage must not be resolved a second time under its storage.root."""
    from sentiray.data import storage

    if storage.is_remote(uri) or uri.startswith("file://"):
        return uri
    return os.path.abspath(uri)


def stage_output(cfg: JobConfig) -> str | None:
    """What a later stage reads from this one (absolute), or None for a stage that leaves nothing."""
    from sentiray.data import storage

    if cfg.stage in ("data", "rationales", "augment"):
        return _absolute(cfg.resolve(cfg.data.output))
    if cfg.stage == "models":
        return _absolute(cfg.resolve(cfg.models.output))
    if cfg.stage == "train":
        return storage.join(_absolute(cfg.resolve(cfg.train.output)), "model")
    if cfg.stage == "evaluate":
        return _absolute(cfg.resolve(cfg.evaluate.output))
    if cfg.stage == "tune":
        return _absolute(cfg.resolve(cfg.tune.output))
    return None  # serve: a deployment, not a URI


def is_complete(cfg: JobConfig) -> bool:
    """Whether the stage's output carries the marker the stage writes last."""
    from sentiray.data import schema, storage
    from sentiray.evaluate.stage import REPORT
    from sentiray.sweep.driver import SUCCESS as SWEEP_SUCCESS
    from sentiray.train.launcher import SUCCESS as TRAIN_SUCCESS

    out = stage_output(cfg)
    if out is None:
        return False  # serve always (re)deploys: that is idempotent
    if cfg.stage in ("data", "rationales", "augment"):
        return schema.is_complete(out) and not cfg.data.overwrite
    if cfg.stage == "train":
        return storage.exists(storage.join(_absolute(cfg.resolve(cfg.train.output)), TRAIN_SUCCESS))
    if cfg.stage == "tune":
        return storage.exists(storage.join(out, SWEEP_SUCCESS))
    if cfg.stage == "models":
        from sentiray.models.tiny import SUCCESS as MODELS_SUCCESS

        return storage.exists(storage.join(out, MODELS_SUCCESS))
    return storage.exists(storage.join(out, REPORT))


@dataclass
class Step:
    name: str
    config_path: str
    overrides: list[str]  # everything applied to the job YAML, in order: pipeline, stage, inputs, command line
    cfg: JobConfig
    output: str | None


def split_cli_overrides(overrides: list[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``key=value`` applies to every stage, ``NAME:key=value`` to stage NAME only."""
    common: list[str] = []
    per_stage: dict[str, list[str]] = {}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in names:
                raise ConfigError(f"override {item!r}: no stage named {head!r} (stages: {', '.join(names)})")
            per_stage.setdefault(head, []).append(rest)
        else:
            common.append(item)
    return common, per_stage


def stage_config_path(config_path: str, pipeline_file: str | Path) -> str:
    """A stage's job YAML: as written when it exists from here (the project root, where the
    shipped files are run from, and what a cluster job's working_dir holds); else beside the
    pipeline file, or in the project above it (``jobs/pipeline.yaml`` names ``jobs/data.yaml``),
    so that a pipeline runs from any directory."""
    written = Path(config_path)
    if written.is_absolute() or written.exists():
        return config_path
    folder = Path(pipeline_file).resolve().parent
    for base in (folder, folder.parent):
        if (base / written).is_file():
            return str(base / written)
    return config_path  # config.load names it missing


def load(path: str | Path, cli_overrides: list[str] | None = None) -> tuple[PipelineConfig, list[Step]]:
    """Read and validate the pipeline and every stage config in it, inputs wired. Nothing runs."""
    from sentiray import stages

    raw = config.load_raw(path)
    try:
        pipe = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(config.format_validation_error(exc, str(path))) from None
    common, per_stage = split_cli_overrides(cli_overrides or [], [s.name for s in pipe.stages])
    shared = list(pipe.overrides)
    if pipe.storage is not None:
        shared.append(f"storage.root={_absolute(pipe.storage.root)}")
    # Stages are tracked in the pipeline's experiment and store, so they nest under its run.
    shared.append(f"tracking.experiment={pipe.tracking.experiment}")
    shared.append(f"tracking.enabled={str(pipe.tracking.enabled).lower()}")
    if pipe.tracking.tracking_uri:
        shared.append(f"tracking.tracking_uri={pipe.tracking.tracking_uri}")

    steps: list[Step] = []
    outputs: dict[str, str | None] = {}
    for step in pipe.stages:
        wired = []
        for field, source in step.inputs.items():
            if outputs[source] is None:
                raise ConfigError(f"{path}: stage {step.name!r} input {field} takes {source!r}, which has no output")
            wired.append(f"{field}={outputs[source]}")
        overrides = [*shared, *step.overrides, *wired, *common, *per_stage.get(step.name, [])]
        config_path = stage_config_path(step.config, path)
        try:
            cfg = config.load(config_path, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: stage {step.name!r}: {exc}") from None
        stages.stage_function(cfg.stage)  # a stage this version lacks fails now
        outputs[step.name] = stage_output(cfg)
        steps.append(Step(step.name, config_path, overrides, cfg, outputs[step.name]))
    return pipe, steps


# --------------------------------------------------------------------------- state


class State:
    """``<root>/_pipelines/<name>.json``: each stage's status, output, time and job id."""

    def __init__(self, pipe: PipelineConfig, steps: list[Step]) -> None:
        from sentiray.data import storage

        root = _absolute(steps[0].cfg.storage.root)  # the pipeline's storage.root, overrides applied
        self.uri = storage.join(root, STATE_DIR, f"{pipe.name}.json")
        self.data: dict[str, Any] = storage.read_json(self.uri) if storage.exists(self.uri) else {}
        self.data["name"] = pipe.name
        self.data.setdefault("stages", {})
        self.data.setdefault("history", [])

    @property
    def mlflow_run_id(self) -> str | None:
        return self.data.get("mlflow_run_id")

    def set(self, name: str, **fields: Any) -> None:
        from sentiray.data import storage

        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.data["stages"][name] = {**self.data["stages"].get(name, {}), **fields, "updated": now}
        if "status" in fields:
            self.data["history"].append({"stage": name, "status": fields["status"], "at": now})
        self.data["updated"] = now
        storage.write_json(self.uri, self.data)

    def save(self) -> None:
        from sentiray.data import storage

        storage.write_json(self.uri, self.data)


# --------------------------------------------------------------------------- running


class StageFailed(RuntimeError):
    """A stage ended in error: the chain stops there."""


def _run_local(step: Step) -> dict[str, Any]:
    from sentiray import stages

    try:
        return stages.run_stage(step.cfg)
    except Exception as exc:
        traceback.print_exc()
        raise StageFailed(f"{type(exc).__name__}: {exc}") from exc


def _run_job(step: Step, client, address: str, parent_run_id: str | None, follow: bool) -> dict[str, Any]:
    """One Ray job: ``sentiray run <job YAML> <overrides>`` with the pipeline's parent run id."""
    from sentiray.cluster import submit as sj

    environ = dict(os.environ)
    if parent_run_id:
        environ["SENTIRAY_PARENT_RUN_ID"] = parent_run_id
    _, sub = sj.prepare(step.config_path, step.overrides, environ=environ)
    for warning in sub.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    result = sj.submit(client, sub)
    verb = "submitted" if result.created else f"attached to the existing job ({result.status})"
    print(f"{step.name}: {verb} {result.submission_id} at {address}", flush=True)
    if follow and result.status != "SUCCEEDED":
        status = sj.follow(client, result.submission_id, sys.stdout, sub.secrets)
    else:
        status = sj.wait(
            client,
            result.submission_id,
            on_status=lambda s: print(f"{step.name}: {result.submission_id} {s}", flush=True),
        )
    retries = sj.job_retries(client, result.submission_id)
    if retries is not None and retries.line():
        print(f"{step.name}: {result.submission_id}: {retries.line()}", flush=True)
    if status != "SUCCEEDED":
        tail = sj.error_tail(client, result.submission_id, secrets=sub.secrets)
        if status == "FAILED" and is_complete(step.cfg):
            # The stage wrote the marker it writes last, then its process failed: seen as a
            # SIGABRT at interpreter exit ("terminate called without an active exception") after
            # a data stage's "wrote ..." line. A rerun would skip the stage; this run goes on so.
            print(
                f"warning: {step.name}: job {result.submission_id} FAILED after its output was complete "
                f"({step.output}): taken as done. The end of its log:\n{tail}",
                file=sys.stderr,
            )
            return {"job_id": result.submission_id, "failed_after_output": True}
        print(tail, file=sys.stderr)
        raise StageFailed(f"job {result.submission_id} {status}: {tail.splitlines()[0]}")
    return {"job_id": result.submission_id}


def _parent_run(pipe: PipelineConfig, state: State):
    """The pipeline's MLflow run: the one in the state file if it still exists, else a new one."""
    import contextlib

    from sentiray import tracking

    if not pipe.tracking.enabled:
        return contextlib.nullcontext(None)
    return tracking.pipeline_run(
        pipe.name, pipe.tracking, tags={"sentiray.pipeline": pipe.name}, run_id=state.mlflow_run_id
    )


def run(
    pipe: PipelineConfig,
    steps: list[Step],
    address: str | None = None,
    follow: bool = True,
    summary: bool = True,
    on_stage: Callable[[Step], None] | None = None,
) -> int:
    """Run the chain; returns the exit code (0 done, 1 a stage failed, 130 interrupted).

    Its own lines go through :mod:`sentiray.console` (they reach the terminal in quiet mode);
    ``summary``: end with the table of stages; ``on_stage(step)`` is called as each stage that
    runs starts (the demo starts Serve while the student trains).
    """
    from sentiray import console

    client = None
    if address:
        from sentiray import runtime
        from sentiray.cluster import submit as sj

        client = sj.connect(
            address
        )  # an unreachable cluster or a refused token fails before anything is read or written
        if any(runtime.node_local_outputs(s.cfg) for s in steps):
            nodes = sj.alive_nodes(address)
            for s in steps:  # on several nodes, a node-local output fails the whole chain before its first stage
                try:
                    runtime.check_shared_storage(s.cfg, nodes)
                except ConfigError as exc:
                    raise ConfigError(f"stage {s.name!r}: {exc}") from None
            roots = {s.cfg.storage.root for s in steps}
            print(
                f"warning: the stages write local paths ({', '.join(sorted(roots))}) on a one-node cluster; "
                "with more nodes use storage.root=s3://...",
                file=sys.stderr,
            )
    state = State(pipe, steps)
    where = f"one Ray job per stage at {address}" if address else "in this process"
    console.say(f"pipeline {pipe.name}: {len(steps)} stage(s), {where}; state in {state.uri}")

    rows: list[tuple[str, str, str, float]] = []
    code = 0
    with _parent_run(pipe, state) as parent:
        if parent is not None:
            state.data["mlflow_run_id"] = parent.info.run_id
            state.save()
        for i, step in enumerate(steps, 1):
            header = f"== [{i}/{len(steps)}] {step.name} ({step.cfg.stage}, {step.config_path})"
            if is_complete(step.cfg):
                console.say(f"{header}: complete at {step.output}; skipped")
                state.set(step.name, status="skipped", output=step.output)
                rows.append((step.name, "skipped", step.output or "", 0.0))
                continue
            console.say(header)
            if on_stage is not None:
                on_stage(step)
            state.set(step.name, status="running", output=step.output, started=time.time())
            start = time.perf_counter()
            try:
                extra = (
                    _run_job(step, client, address, parent and parent.info.run_id, follow)
                    if client
                    else _run_local(step)
                )
            except StageFailed as exc:
                seconds = time.perf_counter() - start
                state.set(step.name, status="failed", error=str(exc)[:2000], seconds=round(seconds, 1))
                rows.append((step.name, "FAILED", str(exc).splitlines()[0][:100], seconds))
                console.warn(f"\npipeline {pipe.name}: stage {step.name!r} failed: {exc}")
                console.warn(f"fix it and rerun the same command: the {i - 1} stage(s) before it are skipped")
                code = 1
                break
            except KeyboardInterrupt:
                state.set(step.name, status="interrupted")
                console.warn(f"\npipeline {pipe.name}: interrupted in {step.name!r}; rerun to go on from there")
                return 130
            seconds = time.perf_counter() - start
            fields = {"job_id": extra.get("job_id")} if isinstance(extra, dict) and extra.get("job_id") else {}
            state.set(step.name, status="succeeded", seconds=round(seconds, 1), **fields)
            rows.append((step.name, "succeeded", step.output or "", seconds))
            if len(steps) > 1:  # what each stage of a chain costs, as it ends
                console.say(f"   {step.name} done in {seconds:.0f} s")
        if parent is not None:
            import mlflow

            mlflow.set_tag("sentiray.pipeline.status", "failed" if code else "succeeded")
    if summary:
        console.say(f"\n== pipeline {pipe.name}")
        width = max(len(r[0]) for r in rows)
        for name, status, where_, seconds in rows:
            console.say(f"{name:<{width}}  {status:<9}  {seconds:>7.1f}s  {where_}")
    return code


# --------------------------------------------------------------------------- command line


def cmd_pipeline(args: argparse.Namespace) -> int:
    from sentiray.cluster.submit import ClusterError

    pipe, steps = load(args.config, args.overrides)  # every stage validated before anything runs
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            done = "complete, skipped" if is_complete(step.cfg) else "to run"
            print(f"[{i}] {step.name}: {step.cfg.stage} {step.config_path} ({done})")
            print(f"    sentiray run {step.config_path} " + " ".join(step.overrides))
            print(f"    output: {step.output}")
        return 0
    try:
        return run(pipe, steps, address=args.address, follow=not args.quiet)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_commands(sub) -> None:
    p = sub.add_parser("pipeline", help="run the stages of a pipeline YAML in order, skipping finished ones")
    p.add_argument("config", help="pipeline YAML, e.g. jobs/pipeline.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="[stage:]key.sub=value",
        help="overrides for every stage, or for one stage with its name and a colon",
    )
    p.add_argument(
        "--address",
        help="Ray dashboard (http://HEAD:8265): each stage becomes a Ray job; default: run every stage in this process",
    )
    p.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="show each stage's command and state; run nothing"
    )
    p.add_argument(
        "--quiet", action="store_true", help="on a cluster, print job states instead of streaming their logs"
    )
    p.set_defaults(func=cmd_pipeline)
