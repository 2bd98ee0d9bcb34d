"""``sentiray demo``: the three methods' chains on CPU, tiny models, synthetic data, embedded defaults.

The chains are the pipeline files under ``jobs/`` that ``sentiray pipeline`` runs (one source
of truth): ``jobs/pipeline.yaml`` (MulCoT-RD), ``jobs/pipeline_lrsa.yaml`` (LRSA) and
``jobs/pipeline_mse.yaml`` (MSE-Adapter). The demo adds only what a laptop needs on top:

- the stand-ins for the large pretrained models, built and cached under ``<workdir>/models``:
  the tiny random models (``jobs/models.yaml``), and three of them briefly fitted so that they
  carry signal (a random tiny model writes noise): the MulCoT teacher and the LRSA teacher (a
  tiny VLM fitted on the synthetic train split's gold chains / rationales, after the chain's
  ``data`` stage wrote it), and the MSE-Adapter backbone (a tiny causal LM fitted on
  text-only sentiment of an independent corpus);
- demo sizes, as ``stage:key=value`` overrides (:data:`CHAINS`), printed with the command that
  reruns the chain, so a user reruns any step from its file, at the demo's sizes or its own.

The MulCoT-RD chain runs in this process; the LRSA and MSE-Adapter chains run beside it, in a
second Ray driver (``python -m sentiray.demo``) on the same cluster, so that they use the cores
the longer chain leaves idle. Each stand-in is fitted in a Ray task of one CPU (one torch thread).
What would wait on one core runs beside other work: the local Ray cluster starts while the tiny
models are built, and Serve (controller and proxy) while the student trains.

Every stage is real (Ray Data, Ray Train with DeepSpeed, MLflow); finished stages are reused
on a rerun (each is idempotent). The console stays quiet: one line per step, progress bars,
the summary; Ray's, DeepSpeed's and torch's own output goes to ``<workdir>/demo.log``
(``verbose`` shows it live).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentiray import config, console, pipeline, runtime, stages, tracking
from sentiray.data import schema, storage

EXPERIMENT = "sentiray-demo"


@dataclass(frozen=True)
class Chain:
    title: str
    pipeline: str  # relative to the project root
    overrides: tuple[str, ...]  # the demo's sizes, on top of the file's settings
    stand_in_steps: int  # optimizer steps fitting the chain's stand-in model (--teacher-steps overrides)


# The demo's sizes. ``{models}`` is the folder of the stand-in models.
CHAINS: dict[str, Chain] = {
    "mulcot": Chain(
        "MulCoT-RD: teacher -> assistant -> student",
        "jobs/pipeline.yaml",
        (
            "data:data.size=600",
            "rationales:teacher.model.path={models}/teacher",
            "rationales:teacher.max_new_tokens=160",
            "rationales:teacher.batch_size=16",
            # two generating actors of one CPU each: the tiny teacher's generate() gains little
            # from a second thread
            "rationales:teacher.concurrency=2",
            "assistant:model.path={models}/vlm",
            # the assistant's dev accuracy (plateau schedule, so the first epochs do not depend on
            # the count) reaches its best at epoch 6: 0.33, 0.33, 0.33, 0.43, 0.80, 0.88, (7th: 0.87)
            "assistant:train.epochs=6",
            "assistant:train.stream=false",
            "assistant:train.lr=5e-3",
            "assistant:train.log_every=10",
            "augment:augment.max_new_tokens=160",
            "augment:augment.concurrency=2",
            "student:model.path={models}/student-init",
            # test accuracy 0.867 after 4 epochs, 0.833 after 5 (dev 0.85 and 0.87)
            "student:train.epochs=4",
            "student:train.stream=false",
            # ZeRO-3 (the file's setting, for students that fill a device) gathers every layer's
            # weights over gloo each step: 1.6x the time of ZeRO-2 for the tiny student here
            "student:train.zero_stage=2",
            "student:train.lr=5e-3",
            "student:train.log_every=10",
            "evaluate:mulcot.chain_max_new_tokens=160",
        ),
        # 400 steps: pass-1 accuracy 0.39 and 222 of 480 pass-2 chains off the gold label, left
        # out of training; the student then stayed at chance
        stand_in_steps=600,
    ),
    "lrsa": Chain(
        "LRSA: LLM rationales injected into a small aspect model",
        "jobs/pipeline_lrsa.yaml",
        (
            "data:data.size=400",
            "rationales:teacher.model.path={models}/teacher-lrsa",
            "train:model.path={models}/encoder",
            "train:lrsa.vision_model={models}/vision",
            "train:train.epochs=4",
            "train:train.num_workers=1",
            # one thread: it trains beside the MulCoT chain
            "train:train.cpus_per_worker=1",
        ),
        stand_in_steps=300,  # JMASA F1 0.73 (400 steps: 0.75, 600: 0.71-0.73)
    ),
    "mse": Chain(
        "MSE-Adapter: a frozen LLM plus a small audio/video adapter",
        "jobs/pipeline_mse.yaml",
        (
            "data:data.size=600",
            "train:model.path={models}/demo-backbone",
            "train:train.epochs=4",
            "train:train.stream=false",
            "train:train.cpus_per_worker=1",
        ),
        stand_in_steps=500,  # test MAE 0.42 (800 steps: 0.48, 400: 0.58; the mean predictor 1.35)
    ),
}
FAMILIES = tuple(CHAINS)


def project_root() -> Path:
    """Where ``jobs/`` is: the current directory if it has one, else this source tree's root."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "jobs" / "pipeline.yaml").is_file():
            return root
    raise config.ConfigError(
        "sentiray demo runs the pipeline files under jobs/: run it from the project's folder "
        "(a clone of the repository)"
    )


class _Steps:
    """Times named steps and prints one line as each starts and ends."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def run(self, name: str, fn, *args: Any) -> Any:
        """``fn(*args)`` returns (result, what to show as its output)."""
        console.say(f"-> {name}")
        start = time.perf_counter()
        result, where = fn(*args)
        seconds = time.perf_counter() - start
        self.rows.append((name, seconds, where))
        console.say(f"   done in {seconds:.0f} s: {where}")
        return result

    def table(self, wall: float) -> str:
        """The steps, and ``wall``: the seconds they took from the first one's start (steps
        beside others overlap them)."""
        width = max(len(n) for n, _, _ in self.rows + [("total (wall clock)", 0, "")])
        lines = [f"{'step':<{width}}  {'seconds':>7}  output"]
        lines += [f"{n:<{width}}  {s:>7.1f}  {w}" for n, s, w in self.rows]
        lines.append(f"{'total (wall clock)':<{width}}  {wall:>7.1f}")
        return "\n".join(lines)


def _load_chain(name: str, root: Path, workdir: str, models: str, extra: list[str]):
    chain = CHAINS[name]
    overrides = [
        f"storage.root={workdir}/{name}",
        f"tracking.experiment={EXPERIMENT}",
        *(o.format(models=models) for o in chain.overrides),
        *extra,
    ]
    pipe, steps = pipeline.load(root / chain.pipeline, overrides)
    pipe = pipe.model_copy(
        update={"tracking": pipe.tracking.model_copy(update={"experiment": EXPERIMENT}), "name": f"demo-{name}"}
    )
    return chain, pipe, steps, overrides


class DemoFailed(RuntimeError):
    """A chain's stage failed; the stage's error was printed, its traceback is in the log."""


def _run_steps(pipe, steps, on_stage=None) -> tuple[None, str]:
    """Run the chain's steps (finished ones are skipped); returns (None, the last one's output)."""
    code = pipeline.run(pipe, steps, summary=False, on_stage=on_stage)
    if code:
        where = f" (traceback in {console.log_path()})" if console.log_path() else ""
        raise DemoFailed(
            f"the {pipe.name} chain stopped at a failed stage{where}; rerun `sentiray demo` to go on from there"
        )
    return None, steps[-1].output


def _by_name(steps, name: str):
    return next(s for s in steps if s.name == name)


def _report(step) -> dict[str, Any]:
    return storage.read_json(storage.join(step.output, "report.json"))


# --------------------------------------------------------------------------- what each chain shows


def _majority(values: list[Any]) -> float:
    from collections import Counter

    return Counter(values).most_common(1)[0][1] / len(values) if values else 0.0


def headline(name: str, steps) -> tuple[str, dict[str, float]]:
    """One line of each chain's test results beside its trivial baseline, and the numbers."""
    report = _report(_by_name(steps, "evaluate"))
    m = report["metrics"]
    data = report["data"]
    if name == "mulcot":
        base = _majority([r["label"] for r in schema.read_rows(data, "test", ["label"])])
        return (
            f"student: test accuracy {m['label_accuracy']:.3f}, macro-F1 {m['label_macro_f1']:.3f} "
            f"(majority class {base:.3f}); its chains: BLEU-4 {m.get('reasoning_bleu4', 0):.1f}, "
            f"ROUGE-L {m.get('reasoning_rouge_l', 0):.3f}"
        ), {"accuracy": m["label_accuracy"], "baseline": base}
    if name == "lrsa":
        rows = schema.read_rows(data, "test", ["spans"])
        polarities = [s["polarity"] for r in rows for s in (r["spans"] or [])]
        base = _majority(polarities)
        return (
            f"JMASA F1 {m['jmasa_f1']:.3f} (predicting no aspect: 0.000), MATE F1 {m['mate_f1']:.3f}, "
            f"MASC accuracy {m['masc_acc']:.3f} (majority polarity {base:.3f}); without rationales: JMASA F1 "
            f"{m.get('norat_jmasa_f1', float('nan')):.3f}"
        ), {"jmasa_f1": m["jmasa_f1"], "baseline": base}
    import numpy as np

    train = [r["score"] for r in schema.read_rows(data, "train", ["score"])]
    test = [r["score"] for r in schema.read_rows(data, "test", ["score"])]
    mean_mae = float(np.mean(np.abs(np.asarray(test) - np.mean(train))))
    return (
        f"test MAE {m['MAE']:.3f} (the mean predictor: {mean_mae:.3f}), Acc-2 {m['Has0_acc_2']:.3f}, "
        f"Corr {m['Corr']:.3f}"
    ), {"mae": m["MAE"], "baseline": mean_mae}


# --------------------------------------------------------------------------- the stand-ins

PROGRESS_EVERY = 5  # steps between progress-file writes


def _progress_file(models: str, name: str) -> str:
    return os.path.join(models, f".fit-progress-{name}.json")


def _fit_one(name: str, models: str, data_uri: str, steps: int) -> tuple[str, str]:
    """Fit (or reuse) chain ``name``'s stand-in; returns (its folder, what it is). Writes its
    progress to :func:`_progress_file` for the driver's bar."""
    import json

    progress = _progress_file(models, name)

    def on_step(done: int, total: int) -> None:
        if done % PROGRESS_EVERY == 0 or done == total:
            with open(f"{progress}.tmp", "w") as f:
                json.dump({"step": done, "total": total}, f)
            os.replace(f"{progress}.tmp", progress)

    if name in ("mulcot", "lrsa"):
        from sentiray.teacher.demo_teacher import describe, fit_demo_teacher

        # the MulCoT chain's teacher writes chains only (its pipeline asks no LRSA rationales);
        # each teacher's logits setting is the one it was checked with (fit_demo_teacher)
        kinds = {"kinds": ("chain", "rationalize"), "target_logits": True} if name == "mulcot" else {}
        target = f"{models}/teacher" if name == "mulcot" else f"{models}/teacher-lrsa"
        path = fit_demo_teacher(f"{models}/vlm", data_uri, target, steps=steps, on_step=on_step, **kinds)
        return path, describe(path)
    from sentiray.models.demo_backbone import DESCRIPTION, fit_demo_backbone

    path = fit_demo_backbone(
        f"{models}/causal_lm", f"{models}/demo-backbone", tasks=("msa",), steps=steps, on_step=on_step
    )
    return path, DESCRIPTION


def _fit_lane(jobs: list[tuple[str, str, str, int]]) -> list[tuple[str, str]]:
    """A Ray task's work: the stand-ins of ``jobs`` (name, models, data, steps) one after another."""
    return [_fit_one(*job) for job in jobs]


def _fit_stand_ins(loaded: dict[str, tuple], models: str, teacher_steps: int | None) -> tuple[dict[str, str], str]:
    """Fit (or reuse) the stand-ins of the chains in ``loaded``, one after another, in a Ray task
    of one CPU: Ray gives it one torch thread, and a tiny model does 1.45x more work per
    core-second in two 1-thread processes than in one 2-thread process (150 teacher steps: 19.8 s
    on 2 threads; 27.3 s each for two 1-thread fits side by side), the other core being busy
    with the chains beside. One bar on the terminal."""
    import ray

    runtime.ensure_ray(next(iter(loaded.values()))[2][0].cfg.ray)
    steps = {n: teacher_steps or CHAINS[n].stand_in_steps for n in loaded}
    jobs = [(n, models, _by_name(loaded[n][2], "data").output, steps[n]) for n in loaded]
    for name in loaded:
        if os.path.exists(_progress_file(models, name)):
            os.remove(_progress_file(models, name))
    with _fit_progress(models, steps):
        done = ray.get(ray.remote(num_cpus=1)(_fit_lane).remote(jobs))
    for _, what in done:
        console.say(f"   {what}")
    return dict(zip(loaded, (path for path, _ in done))), ", ".join(path for path, _ in done)


@contextlib.contextmanager
def _fit_progress(models: str, steps: dict[str, int]):
    """While the fits run: one bar on the terminal, fed by their progress files (quiet mode only)."""
    if not console.is_quiet():
        yield
        return
    import json

    stop = threading.Event()

    def poll() -> None:
        bar = console.progress(sum(steps.values()), "stand-in models", unit="step")
        while True:
            stopping = stop.wait(1.0)
            state = {}
            for name, planned in steps.items():
                try:
                    with open(_progress_file(models, name)) as f:
                        state[name] = json.load(f)
                except (OSError, ValueError):
                    state[name] = {"step": 0, "total": planned}
            bar.total = sum(p["total"] for p in state.values())
            bar.n = sum(p["step"] for p in state.values())
            bar.set_postfix_str(", ".join(f"{n} {p['step']}/{p['total']}" for n, p in state.items()))
            if stopping:
                break
        bar.close()

    thread = threading.Thread(target=poll, name="sentiray-fit-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- what the demo starts


@contextlib.contextmanager
def _own_ray():
    """Stop the Ray cluster the demo started, before the console is given back (else the log
    lines its workers still send would reach the terminal); a cluster it joined stays."""
    import ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


class _ServeEarly:
    """Serve's controller and proxy, started in a thread as stage ``at`` starts (the serving
    step then only deploys: 3.6 s less that it waits for); a pipeline ``on_stage`` hook."""

    def __init__(self, at: str) -> None:
        self.at = at
        self.pool = ThreadPoolExecutor(1)
        self.starting: Future | None = None

    def __call__(self, step) -> None:
        if step.name == self.at and self.starting is None:
            from sentiray.serving.demo_step import start_serve

            self.starting = self.pool.submit(start_serve)

    def wait(self) -> bool:
        """Until Serve runs (its error, if it failed, is raised here); whether this started it."""
        started = self.starting is not None and self.starting.result()
        self.pool.shutdown()
        return started

    def stop(self) -> None:
        """Stop the Serve this started (a chain failed before the serving step)."""
        try:
            started = self.wait()
        except Exception:  # Serve did not start: nothing to stop
            return
        if started:
            from ray import serve

            serve.shutdown()


# --------------------------------------------------------------------------- the chains beside


class _Beside:
    """The chains after the first, run beside it by a second Ray driver (``python -m
    sentiray.demo``) on the same cluster; its lines are printed when it ends.

    A process, not a thread: a pipeline keeps its MLflow parent run in the process's
    environment, and each chain needs its own."""

    def __init__(self, families: tuple[str, ...], workdir: str, options: list[str], verbose: bool, ray_cfg):
        import subprocess
        import sys

        import ray

        # Ray first: starting it puts RAY_AUTH_MODE=token in this environment, which the second
        # driver needs to join the cluster under token authentication
        runtime.ensure_ray(ray_cfg)
        address = ray.get_runtime_context().gcs_address

        self.families = families
        self.results_path = os.path.join(workdir, ".beside-results.json")
        self.out_path = os.path.join(workdir, "beside.out")
        if os.path.exists(self.results_path):
            os.remove(self.results_path)
        cmd = [sys.executable, "-m", "sentiray.demo", "--workdir", workdir, "--results", self.results_path]
        cmd += [f"--family={f}" for f in families] + options + (["--verbose"] if verbose else [])
        env = {**os.environ, "RAY_ADDRESS": address}
        self.out = None if verbose else open(self.out_path, "w")  # verbose: live, on this terminal
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=None if verbose else subprocess.STDOUT)
        console.say(
            f"\n== {', '.join(CHAINS[f].title.split(':')[0] for f in families)}: running beside, in a second Ray "
            "driver on the same cluster; their lines follow when they end"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def finish(self) -> dict[str, Any]:
        """Wait for it, print its lines; returns its {"chains": ..., "rows": ...}."""
        code = self.proc.wait()
        if self.out is not None:
            self.out.close()
            with open(self.out_path) as f:
                for line in f.read().splitlines():
                    console.say(line)
        if code or not os.path.exists(self.results_path):
            raise DemoFailed(f"the {', '.join(self.families)} chain(s) beside stopped (exit code {code}); see above")
        return storage.read_json(self.results_path)


def run_beside(
    workdir: str,
    families: tuple[str, ...],
    results_path: str,
    size: int | None = None,
    epochs: int | None = None,
    teacher_steps: int | None = None,
    verbose: bool = False,
) -> None:
    """The second driver's work (:class:`_Beside`): ``families``' chains, on the cluster in
    RAY_ADDRESS, after the first driver wrote their data; it fits their stand-ins first."""
    import json

    root = project_root()
    models = os.path.join(workdir, "models")
    steps_table = _Steps()
    chains: dict[str, Any] = {}
    with console.quiet(os.path.join(workdir, "demo.log"), enabled=not verbose):
        loaded = {
            name: _load_chain(name, root, workdir, models, _size_overrides(name, root, size, epochs, teacher_steps))
            for name in families
        }
        console.say(f"\n== stand-ins for {', '.join(families)} (beside)")
        steps_table.run(f"{', '.join(families)}: stand-in models", _fit_stand_ins, loaded, models, teacher_steps)
        for name, (chain, pipe, steps, _) in loaded.items():
            console.say(f"\n== {chain.title} (beside)")
            chains[name] = _run_chain(name, pipe, steps, steps_table)
    with open(results_path, "w") as f:
        json.dump({"chains": chains, "rows": steps_table.rows}, f)


# --------------------------------------------------------------------------- the demo


def _size_overrides(
    name: str, root: Path, size: int | None, epochs: int | None, teacher_steps: int | None
) -> list[str]:
    """The overrides of ``--size``, ``--epochs`` and ``--teacher-steps`` that chain ``name`` has stages for."""
    extra = [f"data:data.size={size}"] if size else []
    if epochs:
        extra += [f"{stage}:train.epochs={epochs}" for stage in ("assistant", "student", "train")]
    if teacher_steps:
        # A stand-in teacher fitted for fewer steps gets many labels wrong even when told the gold
        # one (pass 2); by default those chains stay out of training, which could leave none.
        extra.append("rationales:teacher.keep_disagreeing_pass2=true")
    names = {stage["name"] for stage in config.load_raw(root / CHAINS[name].pipeline)["stages"]}
    return [o for o in extra if o.split(":")[0] in names]


def _run_chain(name: str, pipe, steps, steps_table: _Steps, on_stage=None) -> dict[str, Any]:
    """The chain's stages after data (finished ones skipped), then its headline line."""
    steps_table.run(f"{name}: {' -> '.join(s.name for s in steps[1:])}", _run_steps, pipe, steps, on_stage)
    line, numbers = headline(name, steps)
    console.say(f"   {line}")
    return {"outputs": {s.name: s.output for s in steps}, "headline": line, **numbers}


def run_demo(
    workdir: str = "runs/demo",
    fresh: bool = False,
    families: tuple[str, ...] = FAMILIES,
    size: int | None = None,
    epochs: int | None = None,
    teacher_steps: int | None = None,
    serve: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the chains of ``families``; ``size``, ``epochs`` and ``teacher_steps`` trade quality for time.

    The first chain (MulCoT-RD, the longest) runs in this process; the others run beside it
    (:class:`_Beside`), on the same Ray cluster: a 2-core machine has room for both, as the
    stages of one chain leave cores idle while Ray starts workers, loads models and saves."""
    unknown = set(families) - set(CHAINS)
    if unknown:
        raise config.ConfigError(f"--family: no chain {sorted(unknown)} (choose from {', '.join(CHAINS)})")
    families = tuple(f for f in CHAINS if f in families)
    root = project_root()
    workdir = os.path.abspath(workdir)
    if fresh and os.path.exists(workdir):
        shutil.rmtree(workdir)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    models = os.path.join(workdir, "models")
    results: dict[str, Any] = {"workdir": workdir, "chains": {}}
    steps_table = _Steps()
    began = time.perf_counter()
    log = os.path.join(workdir, "demo.log")
    with console.quiet(log, enabled=not verbose) as log_path, _own_ray():
        console.say(
            f"sentiray demo: {', '.join(families)} on CPU, tiny models, synthetic data; writing under {workdir}"
        )
        if log_path:
            console.say(f"Ray's, DeepSpeed's and torch's own output: {log_path} (--verbose shows it here)")
        console.say(f"MLflow store: {tracking.tracking_uri(config.TrackingConfig(experiment=EXPERIMENT))}")

        def build_models():
            job = config.load(
                root / "jobs" / "models.yaml", [f"storage.root={workdir}", f"tracking.experiment={EXPERIMENT}"]
            )
            # The local Ray cluster starts meanwhile (here: ray.init wants the main thread). Both
            # mostly wait on imports and process starts, one core each: 4 s less than in turn.
            with ThreadPoolExecutor(1) as pool:
                built = pool.submit(stages.run_stage, job)
                runtime.ensure_ray()
                summary = built.result()
            return summary, f"{len(summary['models'])} models in {summary['output']}; Ray started"

        results["models"] = steps_table.run("tiny models (HF format, random weights)", build_models)["models"]

        loaded = {
            name: _load_chain(name, root, workdir, models, _size_overrides(name, root, size, epochs, teacher_steps))
            for name in families
        }
        for name, (chain, pipe, steps, overrides) in loaded.items():
            console.say(f"\n== {chain.title}")
            console.say(f"   rerun: sentiray pipeline {chain.pipeline} {' '.join(overrides)}")
            steps_table.run(f"{name}: data", _run_steps, pipe, steps[:1])

        first, beside = families[0], families[1:]
        options = [
            f"--{k.replace('_', '-')}={v}"
            for k, v in (("size", size), ("epochs", epochs), ("teacher_steps", teacher_steps))
            if v
        ]
        side = _Beside(beside, workdir, options, verbose, loaded[first][2][0].cfg.ray) if beside else None
        serving_early = _ServeEarly("student") if serve and first == "mulcot" else None
        try:
            chain, pipe, steps, _ = loaded[first]
            console.say(f"\n== {chain.title}")
            console.say("   its stand-in for a pretrained model: fitted on the train split, cached")
            steps_table.run(f"{first}: stand-in model", _fit_stand_ins, {first: loaded[first]}, models, teacher_steps)
            results["chains"][first] = _run_chain(first, pipe, steps, steps_table, serving_early)

            if serving_early is not None:

                def serving():
                    from sentiray.serving.demo_step import serve_and_query

                    started = serving_early.wait()
                    student = results["chains"]["mulcot"]["outputs"]["student"]
                    answers = serve_and_query(student, n_requests=3, stop_serve=started or None)
                    results["served"] = answers
                    return answers, f"{sum(a['status'] == 200 for a in answers)}/{len(answers)} requests answered"

                steps_table.run("serve the MulCoT student (Ray Serve) and query it", serving)
        except BaseException:
            if side is not None:
                side.stop()
            if serving_early is not None:
                serving_early.stop()
            raise
        if side is not None:
            done = side.finish()
            results["chains"].update(done["chains"])
            steps_table.rows += [(f"{n} (beside)", s, w) for n, s, w in done["rows"]]

        console.say("\n== summary")
        console.say(steps_table.table(time.perf_counter() - began))
        for name, chain_result in results["chains"].items():
            console.say(f"{name:>7}: {chain_result['headline']}")
        console.say(f"\nMLflow: experiment '{EXPERIMENT}', one parent run per chain; look at it with:")
        console.say(
            f"  mlflow ui --backend-store-uri {tracking.tracking_uri(config.TrackingConfig(experiment=EXPERIMENT))}"
        )
    results["log"] = log_path
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m sentiray.demo``: the second driver of ``sentiray demo`` (:func:`run_beside`)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sentiray.demo", description=run_beside.__doc__)
    p.add_argument("--workdir", required=True)
    p.add_argument("--family", action="append", choices=list(CHAINS), required=True)
    p.add_argument("--results", required=True, help="where to write the chains' results (JSON)")
    p.add_argument("--size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--teacher-steps", type=int)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        run_beside(
            args.workdir, tuple(args.family), args.results, args.size, args.epochs, args.teacher_steps, args.verbose
        )
    except DemoFailed as exc:
        console.warn(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
