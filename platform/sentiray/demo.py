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


def run_demo(workdir: str = "runs/demo", size: int = 600, fresh: bool = False, epochs: int = 10,
             teacher_steps: int = 1200) -> dict[str, Any]:
    """Run every stage; ``size``, ``epochs`` and ``teacher_steps`` trade quality for time."""
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

        def teacher() -> str:
            from sentiray.teacher.demo_teacher import describe, fit_demo_teacher

            path = fit_demo_teacher(results["models"]["vlm"], results["data"]["msc"], os.path.join(workdir, "models", "teacher"),
                                    steps=teacher_steps)
            print(f"  the demo's teacher: {describe(path)}")
            results["teacher"] = path
            return path

        steps("demo teacher (tiny VLM fitted on the gold chains, cached)", teacher)

        def rationales() -> str:
            job = _job("rationales", workdir, name="rationales",
                       data={"format": "canonical", "input": "data/msc", "output": "data/rationales"},
                       teacher={"backend": "hf", "name": "demo-teacher (tiny VLM)", "model": {"path": results["teacher"]},
                                "max_new_tokens": 160, "batch_size": 16, "lrsa_rationales": False})
            summary = stages.run_stage(job)
            results["rationales"] = summary["output"]
            return summary["output"]

        steps("teacher rationales (Ray Data, two passes)", rationales)

        train_common = {"epochs": epochs, "lr": 5e-3, "batch_size": 8, "num_workers": 2, "log_every": 10}

        def assistant() -> str:
            job = _job("train", workdir, name="assistant", data={"format": "canonical", "input": "data/rationales"},
                       model={"path": results["models"]["vlm"]}, mulcot={"role": "assistant"},
                       train={**train_common, "output": "checkpoints/assistant", "zero_stage": 2})
            summary = stages.run_stage(job)
            results["assistant"] = summary["model"]
            return summary["model"]

        steps("assistant (Ray Train + DeepSpeed ZeRO-2, 2 workers)", assistant)

        def augment() -> str:
            job = _job("augment", workdir, name="augment",
                       data={"format": "canonical", "input": "data/rationales", "output": "data/augmented"},
                       model={"path": results["assistant"]},
                       augment={"temperature": 0.7, "max_new_tokens": 160, "batch_size": 16})
            summary = stages.run_stage(job)
            results["augmented"] = summary["output"]
            return summary["output"]

        steps("augment (assistant's correct chains join the teacher's)", augment)

        def student() -> str:
            from sentiray.models.tiny import build_tiny_vlm

            init = build_tiny_vlm(os.path.join(workdir, "models", "student-init"), seed=7)
            job = _job("train", workdir, name="student", data={"format": "canonical", "input": "data/augmented"},
                       model={"path": init}, mulcot={"role": "student"},
                       train={**train_common, "output": "checkpoints/student", "zero_stage": 3},
                       distill={"teacher_path": results["assistant"], "lambda_kd": 0.3, "tau": 2.0})
            summary = stages.run_stage(job)
            results["student"] = summary["model"]
            results["student_registered"] = summary.get("registered_model")
            return summary["model"]

        steps("student (distilled from the frozen assistant, ZeRO-3)", student)

        def evaluate() -> str:
            job = _job("evaluate", workdir, name="evaluate-student", data={"format": "canonical", "input": "data/rationales"},
                       model={"path": results["student"]},
                       evaluate={"split": "test", "output": "reports/student"}, mulcot={"chain_max_new_tokens": 160})
            summary = stages.run_stage(job)
            results["metrics"] = summary["metrics"]
            return summary["output"]

        steps("evaluate the student on the test split", evaluate)

        def serving() -> str:
            from sentiray.serving.demo_step import serve_and_query

            answers = serve_and_query(results["student"], n_requests=3)
            results["served"] = answers
            return f"{sum(1 for a in answers if a['status'] == 200)}/{len(answers)} requests answered"

        steps("serve the student (Ray Serve) and query it", serving)

    print("\n== summary")
    print(steps.summary())
    print(f"\nMLflow: parent run {results['mlflow_parent_run']} in experiment 'sentiray-demo'")
    print(f"  look at it with: mlflow ui --backend-store-uri {tracking.tracking_uri(tracking_cfg)}")
    m = results.get("metrics", {})
    if m:
        print(f"Student on the test split: accuracy {m.get('label_accuracy', 0):.3f}, macro-F1 {m.get('label_macro_f1', 0):.3f}"
              f" (chance 0.333); from its generated chains: accuracy {m.get('chain_accuracy', 0):.3f}, "
              f"BLEU-4 {m.get('reasoning_bleu4', 0):.1f}, ROUGE-L {m.get('reasoning_rouge_l', 0):.3f}")
        print(f"Report: {os.path.join(workdir, 'reports', 'student', 'report.md')}")
    if results.get("student_registered"):
        print(f"Registered student: {results['student_registered']} (serve it: sentiray serve serve/student.yaml)")
    print(f"Data stats: sentiray data stats {results['data']['msc']}")
    return results
