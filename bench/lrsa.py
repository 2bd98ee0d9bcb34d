"""LRSA: training throughput (Ray Train + DeepSpeed vs a plain PyTorch loop) and the ablation table.

    python bench/lrsa.py [--rows 400] [--epochs 4] [--seeds 3] [--steps 40] [--skip-ablation]

Same family code everywhere (sentiray.families.lrsa: tiny BERT text encoder, tiny CLIP vision
tower, dual cross-attention), synthetic mabsa / masc data whose rationales are the ones a
perfect teacher writes (sentiray.data.synthetic.aspect_rationales). Prints two tables:

1. samples/s on one worker: the plain loop (the same transform, collate and loss, torch AdamW,
   one thread as a 1-CPU Ray worker gets, and every core) against Ray Train + DeepSpeed ZeRO-0
   and ZeRO-2, rows streamed through Ray Data or in memory (the steady rate between the first
   and the last step report; Ray's start-up is reported apart as wall time);
2. the ablation, mean ± std over seeds, test split at each run's best dev epoch: JMASA F1 (mabsa)
   and MASC accuracy (masc; also on the aspects only the picture decides), with both rationales,
   each alone, none; dual vs one-way attention vs concatenation. The ablation trains in-process
   with the plain loop (the model and numbers are the platform's; Ray would only add start-up per
   run). The table and its plot are logged to MLflow (experiment bench-lrsa).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "platform"))

from sentiray import config, families, stages, tracking  # noqa: E402
from sentiray.data import schema, synthetic  # noqa: E402
from sentiray.models.tiny import build_tiny_encoder, build_tiny_vision  # noqa: E402
from sentiray.sweep import ablation  # noqa: E402

# The rows of the paper's ablation table: (name, lrsa overrides).
VARIANTS = [
    ("full: both rationales, dual attention", {}),
    ("text explanation only", {"rationales": "text"}),
    ("image description only", {"rationales": "image"}),
    ("no rationales", {"rationales": "none"}),
    ("one-way attention", {"attention": "one_way"}),
    ("concatenation, no attention", {"attention": "concat"}),
]


def write_data(root: str, task: str, rows: int) -> str:
    uri = os.path.join(root, "data", task)
    data = synthetic.generate(task, rows, seed=0, split_ratios=(0.7, 0.15, 0.15))
    for split in data.splits.values():
        for row in split:
            row.update(synthetic.aspect_rationales(row))
    schema.write_dataset(data, uri)
    return uri


def job(root, models, task, lrsa=None, **train) -> config.JobConfig:
    return config.validate(
        {
            "stage": "train",
            "storage": {"root": root},
            "ray": {"num_cpus": 4},  # logical: Ray Data's file listing needs a CPU beside the worker
            "tracking": {"enabled": True, "experiment": "bench-lrsa", "run_name": train.pop("name", "lrsa")},
            "data": {"format": "canonical", "input": f"data/{task}"},
            "model": {"path": models["encoder"], "kind": "encoder"},
            "lrsa": {"vision_model": models["vision"], **(lrsa or {})},
            "train": {
                "family": "lrsa",
                "output": f"out/{train.pop('output', 'x')}",
                "lr": 3e-3,
                "param_groups": {"encoders": {"lr": 1.5e-3}},
                "batch_size": 16,
                "eval_batch_size": 64,
                "scheduler": "constant",
                "keep_checkpoints": 1,
                **train,
            },
        }
    )


# --------------------------------------------------------------------------- the plain loop


def plain_steps(cfg: config.JobConfig, steps: int, threads: int) -> float:
    """samples/s of ``steps`` optimizer steps: the family's batches and loss, torch AdamW, no Ray."""
    torch.set_num_threads(threads)
    family = families.create(cfg)
    rows = schema.read_rows(family.data_uri(), "train", list(family.columns))
    model = family.build_model().train()
    groups = family.param_groups(model)
    opt = torch.optim.AdamW(
        [{"params": groups["encoders"], "lr": 1.5e-3}, {"params": groups["new"], "lr": cfg.train.lr}]
    )
    batch = cfg.train.batch_size
    start = time.perf_counter()
    for step in range(steps):
        chunk = [family.transform(rows[(step * batch + i) % len(rows)]) for i in range(batch)]
        loss, _ = family.loss(model, family.collate(chunk))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def train_and_test(cfg: config.JobConfig, epochs: int, seed: int) -> dict[str, float]:
    """Train in-process; the test metrics of the epoch with the best dev selection key."""
    torch.manual_seed(seed)
    family = families.create(cfg)
    cols = list(family.columns) + ["meta"]
    train = [
        e for e in (family.transform(r) for r in schema.read_rows(family.data_uri(), "train", cols)) if "skip" not in e
    ]
    dev, test = (schema.read_rows(family.data_uri(), s, cols) for s in ("dev", "test"))
    model = family.build_model()
    groups = family.param_groups(model)
    opt = torch.optim.AdamW(
        [{"params": groups["encoders"], "lr": 1.5e-3}, {"params": groups["new"], "lr": cfg.train.lr}]
    )
    best_key, best = None, {}
    for epoch in range(epochs):
        model.train()
        random.Random(seed * 100 + epoch).shuffle(train)
        for i in range(0, len(train), cfg.train.batch_size):
            loss, _ = family.loss(model, family.collate(train[i : i + cfg.train.batch_size]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        predictor = family.predictor(model)
        key = family.selection().key(
            {f"dev_{k}": v for k, v in predictor.metrics(dev, _predict(predictor, dev)).items()}
        )
        if best_key is None or key > best_key:
            preds = _predict(predictor, test)
            best_key, best = key, dict(predictor.metrics(test, preds), epoch=epoch + 1)
            if family.task == "masc":  # the aspects whose polarity only the picture gives
                implicit = [
                    (r, p)
                    for r, p in zip(test, preds)
                    if json.loads(r["meta"])["aspects"][json.loads(r["meta"])["target"]]["implicit"]
                ]
                best["implicit_acc"] = sum(p["label"] == r["label"] for r, p in implicit) / max(1, len(implicit))
    return best


def _predict(predictor, rows):
    return [p for i in range(0, len(rows), 64) for p in predictor.predict(rows[i : i + 64])]


# --------------------------------------------------------------------------- the two tables


def _steady_rate(run_id: str, batch: int) -> float:
    """samples/s between the first and the last step report (Ray and data start-up left out)."""
    import mlflow

    history = sorted(mlflow.MlflowClient().get_metric_history(run_id, "samples_per_s"), key=lambda m: m.step)
    first, last = history[0], history[-1]
    return (last.step - first.step) * batch / max(1e-9, (last.timestamp - first.timestamp) / 1000)


def throughput(root: str, models: dict[str, str], steps: int) -> None:
    import mlflow

    cores = os.cpu_count() or 1
    rows = [("plain PyTorch loop, 1 thread (baseline)", plain_steps(job(root, models, "mabsa"), steps, 1), None)]
    rows.append((f"plain PyTorch loop, {cores} threads", plain_steps(job(root, models, "mabsa"), steps, cores), None))
    torch.set_num_threads(cores)
    for zero, stream in ((0, True), (2, True), (0, False)):
        name = f"ray-z{zero}-{'stream' if stream else 'memory'}"
        start = time.perf_counter()
        stages.run_stage(
            job(
                root,
                models,
                "mabsa",
                name=name,
                output=name,
                epochs=1000,
                max_steps=steps,
                log_every=max(1, steps // 6),
                zero_stage=zero,
                num_workers=1,
                stream=stream,
            )
        )
        wall = time.perf_counter() - start
        client = mlflow.MlflowClient()
        run = client.search_runs(
            [client.get_experiment_by_name("bench-lrsa").experiment_id], filter_string=f"attributes.run_name = '{name}'"
        )[0]
        rows.append(
            (
                f"Ray Train + DeepSpeed ZeRO-{zero}, 1 worker, rows {'streamed (Ray Data)' if stream else 'in memory'}",
                _steady_rate(run.info.run_id, 16),
                wall,
            )
        )
    base = rows[0][1]
    print(
        f"\nTraining throughput, {steps} steps of batch 16 (mabsa, tiny BERT + tiny CLIP + dual cross-attention); "
        "Ray rows: steady rate between the first and last step reports\n"
    )
    print("| path | samples/s | vs plain (1 thread) | wall s incl. Ray start-up |")
    print("| --- | --- | --- | --- |")
    for name, sps, wall in rows:
        print(f"| {name} | {sps:.1f} | {sps / base:.2f}x | {'-' if wall is None else f'{wall:.0f}'} |")
    print(f"\n(load average during the runs: {os.getloadavg()[0]:.1f} on {cores} cores)")


def ablation_table(root: str, models: dict[str, str], epochs: int, seeds: int) -> None:
    metrics = {"mabsa": ["jmasa_f1", "mate_f1", "masc_acc"], "masc": ["accuracy", "implicit_acc"]}
    results: dict[str, list[dict]] = {task: [] for task in metrics}
    start = time.perf_counter()
    for task in metrics:
        for name, overrides in VARIANTS:
            for seed in range(seeds):
                m = train_and_test(job(root, models, task, overrides), epochs, seed)
                results[task].append({"variant": name, "seed": seed, **m})
                print(
                    f"  {task:5s} {name:40s} seed {seed}: "
                    + ", ".join(f"{k} {m[k]:.3f}" for k in metrics[task])
                    + f" (best dev epoch {m['epoch']}; {time.perf_counter() - start:.0f}s so far)",
                    flush=True,
                )
    tracking.setup(config.TrackingConfig(experiment="bench-lrsa"))
    import mlflow

    with mlflow.start_run(run_name="ablation"):
        for task, names in metrics.items():
            table = ablation.aggregate(results[task], names)
            title = f"LRSA ablation, {task}, {seeds} seeds, test split at the best dev epoch"
            print(f"\n{title}\n")
            print(ablation.markdown(table, names))
            ablation.log(table, names, title, name=f"ablation_{task}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400, help="rows per task (70/15/15 train/dev/test)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of the throughput runs")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-lrsa-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    models = {
        "encoder": build_tiny_encoder(os.path.join(root, "encoder")),
        "vision": build_tiny_vision(os.path.join(root, "vision")),
    }
    for task in ("mabsa", "masc"):
        write_data(root, task, args.rows)
    if not args.skip_throughput:
        throughput(root, models, args.steps)
    if not args.skip_ablation:
        ablation_table(root, models, args.epochs, args.seeds)


if __name__ == "__main__":
    main()
