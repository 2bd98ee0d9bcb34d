"""``sentiray demo``: the pipeline on CPU, tiny models, synthetic data, embedded defaults.

Every step goes through the same stage functions and configs as a real run; only the
sizes differ. Finished steps are reused on a rerun (each stage is idempotent).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from sentiray import config, stages, tracking


def _job(stage: str, workdir: str, **sections: Any) -> config.JobConfig:
    raw = {"stage": stage, "storage": {"root": workdir}, "tracking": {"experiment": "sentiray-demo"}, **sections}
    return config.validate(raw, source=f"demo:{stage}")


class _Steps:
    """Runs named steps, timing each, and remembers what they produced."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def __call__(self, name: str, fn: Callable[[], str]) -> None:
        print(f"\n== {name}")
        start = time.perf_counter()
        where = fn()
        self.rows.append((name, time.perf_counter() - start, where))

    def summary(self) -> str:
        width = max(len(n) for n, _, _ in self.rows)
        lines = [f"{'step':<{width}}  {'seconds':>7}  output"]
        lines += [f"{n:<{width}}  {s:>7.1f}  {w}" for n, s, w in self.rows]
        return "\n".join(lines)


def run_demo(workdir: str = "runs/demo", size: int = 600, fresh: bool = False) -> dict[str, Any]:
    workdir = os.path.abspath(workdir)
    if fresh and os.path.exists(workdir):
        shutil.rmtree(workdir)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    steps = _Steps()
    results: dict[str, Any] = {"workdir": workdir}
    tracking_cfg = config.TrackingConfig(experiment="sentiray-demo")
    print(f"sentiray demo: tiny models, synthetic data, CPU. Writing under {workdir}")
    print(f"MLflow store: {tracking.tracking_uri(tracking_cfg)}")

    with tracking.pipeline_run("demo", tracking_cfg) as parent:
        results["mlflow_parent_run"] = parent.info.run_id

        def models() -> str:
            from sentiray.models.loading import count_parameters, load_model
            from sentiray.models.tiny import build_tiny_models

            job = _job("data", workdir, data={"format": "synthetic"}, name="models")
            with tracking.stage_run(job, "models"):
                paths = build_tiny_models(os.path.join(workdir, "models"))
                for kind, path in paths.items():
                    model, _ = load_model(path, kind=kind)
                    _, total = count_parameters(model)
                    tracking.log_metrics({f"params_{kind}": total})
                    print(f"  {kind:<10} {total:>9,d} parameters  {path}")
            results["models"] = paths
            return os.path.join(workdir, "models")

        steps("tiny models (HF format, random weights)", models)

        def data() -> str:
            outputs = {}
            for task, n in (("msc", size), ("msa", max(60, size // 2))):
                job = _job("data", workdir, name=f"data-{task}",
                           data={"format": "synthetic", "task": task, "size": n, "output": f"data/{task}"})
                summary = stages.run_stage(job)
                outputs[task] = summary["output"]
            results["data"] = outputs
            return ", ".join(outputs.values())

        steps("synthetic data (canonical Parquet)", data)

    print("\n== summary")
    print(steps.summary())
    print(f"\nMLflow: parent run {results['mlflow_parent_run']} in experiment 'sentiray-demo'")
    print(f"  look at it with: mlflow ui --backend-store-uri {tracking.tracking_uri(tracking_cfg)}")
    print(f"Data stats: sentiray data stats {results['data']['msc']}")
    return results
