"""MSE-Adapter: training throughput and memory (adapter vs full fine-tuning, Ray Train vs a plain
PyTorch loop) and the ablation table.

    python bench/mse_adapter.py [--workdir runs/bench-mse-adapter] [--rows 300] [--epochs 10] [--seeds 3]
                                [--steps 30] [--warmup 5] [--lr 2e-2] [--eps 1e-8] [--batch-size 16] [--width 32] [--zero 2]
                                [--backbone-steps 800] [--threads 1] [--throughput-hidden 256 --throughput-layers 4]
                                [--skip-throughput] [--skip-ray] [--skip-ablation]

Same family code everywhere (sentiray.families.mse_adapter): the tiny Qwen2
(sentiray.models.tiny.build_tiny_causal_lm) briefly fitted into a steerable stand-in for a
pretrained LLM (sentiray.models.demo_backbone.fit_demo_backbone, cached under the work dir: a
rerun reuses it; the first run pays for the fit), a small adapter in front of it (width 32,
LSTMs 16 / 8 by default: the paper's 256 would outweigh the tiny backbone itself), synthetic
``msa`` rows (scores in [-3, 3], scored with MMSA's mosi arithmetic). The demo backbone has
0.2M parameters, so adapter vs full fine-tuning differ little there: ``--throughput-hidden``
times the throughput rows on a random Qwen2 of that size instead (learning is irrelevant to a
rate). Prints two tables:

1. samples/s and peak memory on one worker, every row the family's own transform, collate and
   loss: (a) the adapter on the frozen backbone and (b) full fine-tuning of the same model
   (backbone unfrozen + adapter), both in a plain PyTorch loop (torch AdamW, one thread, as a
   1-CPU Ray worker gets; each in a fresh process, so that its peak RSS is its own), and (c) the
   adapter through Ray Train + DeepSpeed (``stages.run_stage`` with a ``train`` job, one worker,
   rows in memory). Rates are steady: the steps after the first ``--warmup`` (the plain loop)
   or between the first and the last step report (Ray; intervals holding an epoch end left
   out); the start-up (launch until the steady window opens: process or Ray start, model
   build, the first steps) is a column apart. Peak memory: the peak resident set size
   (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of the process that trains, i.e. the plain
   loop's child process, or the Ray Train worker (which reports it itself). The ratio columns
   compare each row with its baseline: the adapter with full fine-tuning, Ray with the plain
   adapter loop.
2. the ablation (full adapter, no Text-Guide-Mixer, no Multi-Scale Fusion, text only), mean ±
   std over seeds of test MAE and Has0_acc_2 (MMSA's names; the family's predictor computes
   them), each run trained in-process with a plain loop (AdamW, cosine with 10% warm-up, as the
   paper; but eps 1e-8 and lr 2e-2 by default: with the paper's eps 1e-4 the adapter on the tiny
   demo backbone never changes an answer, see --eps) and scored on the test split at its best
   dev epoch (the family's selection: dev MAE, then Has0_acc_2). The demo backbone reads the
   text well by itself, so a reference row scores the full adapter untrained (its seeds' initial
   weights, before the first step) and one the mean predictor.

Both tables go to MLflow (experiment ``bench-mse-adapter``; the store is MLFLOW_TRACKING_URI,
default a SQLite file in the work dir), as does each Ray run.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "platform"))

from sentiray import config, families, stages, tracking  # noqa: E402
from sentiray.data import schema, synthetic  # noqa: E402

EXPERIMENT = "bench-mse-adapter"
SPLITS = (0.7, 0.15, 0.15)

# The rows of the paper's ablation table: (name, mse_adapter overrides).
VARIANTS = [
    ("full adapter (TGM + MSF)", {}),
    ("no TGM (f = a + v)", {"text_guide": False}),
    ("no MSF (f projected to d)", {"multi_scale": False}),
    ("text only (no audio/video)", {"text_only": True}),
]
UNTRAINED = "reference: full adapter untrained (initial weights)"


# --------------------------------------------------------------------------- the set-up


def prepare(args) -> dict[str, str]:
    """The backbone (tiny Qwen2 fitted into a steerable stand-in; cached) and the data sets."""
    from sentiray.models.demo_backbone import fit_demo_backbone
    from sentiray.models.tiny import build_tiny_causal_lm

    root = args.workdir
    start = time.perf_counter()
    base = build_tiny_causal_lm(os.path.join(root, "models", "causal_lm"))
    backbone = fit_demo_backbone(
        base,
        os.path.join(root, "models", f"demo-backbone-{args.backbone_steps}"),
        tasks=("msa",),
        steps=args.backbone_steps,
        corpus_size=args.backbone_corpus,
    )
    print(f"backbone: {backbone} ({time.perf_counter() - start:.0f}s, cached for reruns)", flush=True)
    throughput_backbone = backbone
    if args.throughput_hidden:
        throughput_backbone = scaled_backbone(
            base, os.path.join(root, "models"), args.throughput_hidden, args.throughput_layers
        )
    # The ablation's data, and the throughput runs' own: one epoch of train rows covers every
    # step, so no dev pass falls inside the timed window.
    data = {"ablation": f"data/msa-{args.rows}"}
    schema.write_dataset(
        synthetic.generate("msa", args.rows, seed=0, split_ratios=SPLITS), os.path.join(root, data["ablation"])
    )
    n = math.ceil(args.steps * args.batch_size / 0.9) + 2
    data["throughput"] = f"data/msa-throughput-{n}"
    schema.write_dataset(
        synthetic.generate("msa", n, seed=1, split_ratios=(0.9, 0.05, 0.05)), os.path.join(root, data["throughput"])
    )
    return {"backbone": backbone, "throughput_backbone": throughput_backbone, **data}


def scaled_backbone(base: str, models: str, hidden: int, layers: int) -> str:
    """A random Qwen2 of the given size with the tiny model's tokenizer (throughput only: an
    adapter cannot learn on it, but its steps cost what a model of that size costs)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    out = os.path.join(models, f"qwen2-{hidden}x{layers}")
    if not os.path.isfile(os.path.join(out, "model.safetensors")):
        cfg = AutoConfig.from_pretrained(base)
        heads = max(2, hidden // 64)
        cfg.update(
            {
                "hidden_size": hidden,
                "intermediate_size": 4 * hidden,
                "num_hidden_layers": layers,
                "layer_types": ["full_attention"] * layers,
                "num_attention_heads": heads,
                "num_key_value_heads": max(1, heads // 2),
                "head_dim": hidden // heads,
            }
        )
        torch.manual_seed(0)
        Qwen2ForCausalLM(cfg).save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def raw_job(args, setup: dict[str, str], data: str, adapter: dict | None = None, **train) -> dict[str, Any]:
    return {
        "stage": "train",
        "storage": {"root": os.path.abspath(args.workdir)},
        "ray": {"num_cpus": 2},
        "tracking": {"enabled": True, "experiment": EXPERIMENT, "run_name": train.pop("name", "mse-adapter")},
        "data": {"format": "canonical", "input": setup[data]},
        "model": {
            "path": setup["throughput_backbone" if data == "throughput" else "backbone"],
            "kind": "causal_lm",
            "dtype": "float32",
        },
        "mse_adapter": {
            "width": args.width,
            "audio_hidden": args.audio_hidden,
            "vision_hidden": args.vision_hidden,
            **(adapter or {}),
        },
        "train": {
            "family": "mse_adapter",
            "output": f"out/{train.pop('output', 'x')}",
            "lr": args.lr,
            "eps": args.eps,
            "weight_decay": 0.0,
            "batch_size": args.batch_size,
            "eval_batch_size": 32,
            "scheduler": "cosine",
            "warmup_ratio": 0.1,
            "keep_checkpoints": 1,
            "stream": False,
            **train,
        },
    }


# --------------------------------------------------------------------------- the plain loop


def plain_child(raw: dict[str, Any], steps: int, warmup: int, full: bool, threads: int) -> dict[str, Any]:
    """In a fresh process: ``steps`` optimizer steps of the family's batches and loss, torch
    AdamW, no Ray. ``full``: the backbone trains too (full fine-tuning). Returns the steady
    rate (the steps after ``warmup``), when the steady window opened, and the peak RSS."""
    import psutil

    torch.set_num_threads(threads)
    rss_imports = psutil.Process().memory_info().rss / 2**20  # torch, transformers, sentiray loaded
    cfg = config.validate(raw)
    family = families.create(cfg)
    rows = schema.read_rows(family.data_uri(), "train", list(family.columns))
    torch.manual_seed(0)
    model = family.build_model().train()
    if full:
        model.backbone.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
    batch = cfg.train.batch_size

    def step(i: int) -> None:
        chunk = [family.transform(rows[(i * batch + j) % len(rows)]) for j in range(batch)]
        loss, _ = family.loss(model, family.collate(chunk))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    for i in range(warmup):
        step(i)
    steady_from, start = time.time(), time.perf_counter()
    for i in range(warmup, steps):
        step(i)
    seconds = time.perf_counter() - start
    return {
        "sps": (steps - warmup) * batch / seconds,
        "steady_from": steady_from,
        "trainable": trainable,
        "frozen": total - trainable,
        "rss_imports_mb": rss_imports,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_plain(raw: dict[str, Any], steps: int, warmup: int, full: bool, threads: int) -> dict[str, Any]:
    launched = time.time()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = pool.submit(plain_child, raw, steps, warmup, full, threads).result()
    return {**out, "startup_s": out["steady_from"] - launched, "wall_s": time.time() - launched}


# --------------------------------------------------------------------------- Ray Train + DeepSpeed


def run_ray(args, setup: dict[str, str], zero: int) -> dict[str, Any]:
    import mlflow
    import ray

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"ray-z{zero}-{stamp}"
    shutil.rmtree(os.path.join(args.workdir, "out", name), ignore_errors=True)
    raw = raw_job(
        args,
        setup,
        "throughput",
        name=name,
        output=name,
        epochs=1000,
        max_steps=args.steps,
        log_every=args.warmup,
        zero_stage=zero,
        num_workers=1,
        cpus_per_worker=1,
        scheduler="constant",
        warmup_ratio=0.0,
    )
    launched = time.time()
    summary = stages.run_stage(config.validate(raw))
    wall = time.time() - launched
    ray.shutdown()  # this process's own local cluster: its CPUs go back before the next runs
    client = mlflow.MlflowClient()
    run = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], filter_string=f"attributes.run_name = '{name}'"
    )[0]
    history = {
        key: sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        for key in ("samples_per_s", "epoch")
    }
    epochs = {m.step: m.value for m in history["epoch"]}
    reports = history["samples_per_s"]
    steps = seconds = 0.0
    for before, after in zip(reports, reports[1:]):
        if epochs.get(before.step) == epochs.get(after.step):  # no dev pass inside the interval
            steps += after.step - before.step
            seconds += (after.timestamp - before.timestamp) / 1000
    params = {k: int(v) for k, v in run.data.params.items() if k in ("trainable_parameters", "frozen_parameters")}
    return {
        "sps": steps * args.batch_size / max(1e-9, seconds),
        "startup_s": reports[0].timestamp / 1000 - launched,
        "wall_s": wall,
        "peak_rss_mb": summary["final"]["peak_rss_mb"],
        "trainable": params.get("trainable_parameters"),
        "frozen": params.get("frozen_parameters"),
    }


def throughput(args, setup: dict[str, str]) -> str:
    threads = 1  # what a Ray Train worker with cpus_per_worker=1 runs on (OMP_NUM_THREADS=1)
    rows: list[tuple[str, dict[str, Any], str | None]] = []
    raw = raw_job(args, setup, "throughput")
    full = run_plain(raw, args.steps, args.warmup, True, threads)
    print(
        f"  plain loop, full fine-tuning: {full['sps']:.1f} samples/s, peak RSS {full['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    adapter = run_plain(raw, args.steps, args.warmup, False, threads)
    print(
        f"  plain loop, adapter: {adapter['sps']:.1f} samples/s, peak RSS {adapter['peak_rss_mb']:.0f} MB", flush=True
    )
    rows.append(("(a) adapter, frozen backbone, plain PyTorch loop", adapter, "(b)"))
    rows.append(("(b) full fine-tuning (backbone + adapter), plain PyTorch loop", full, None))
    if not args.skip_ray:
        for zero in args.zero:
            ray_run = run_ray(args, setup, zero)
            print(
                f"  Ray Train + DeepSpeed ZeRO-{zero}: {ray_run['sps']:.1f} samples/s, peak RSS "
                f"{ray_run['peak_rss_mb']:.0f} MB, wall {ray_run['wall_s']:.0f}s",
                flush=True,
            )
            rows.append((f"(c) adapter, Ray Train + DeepSpeed ZeRO-{zero}, 1 worker", ray_run, "(a)"))
    by_tag = {name[:3]: res for name, res, _ in rows}

    def params(res: dict[str, Any]) -> str:
        if res.get("trainable") is None:
            return "-"
        return f"{res['trainable']:,} / {res['frozen']:,}"

    what = (
        f"a random Qwen2 {args.throughput_hidden} wide, {args.throughput_layers} layers"
        if args.throughput_hidden
        else "the tiny Qwen2 demo backbone, 64 wide, 2 layers"
    )
    lines = [
        f"Training throughput and memory, one worker, one thread, batch {args.batch_size}; steady rate over steps "
        f"{args.warmup + 1}-{args.steps} (synthetic msa; backbone {what}, adapter width {args.width})",
        "",
        "| path | trainable / frozen params | samples/s | peak RSS MB | start-up s | vs | samples/s ratio "
        "| peak RSS ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, res, base_tag in rows:
        base = by_tag.get(base_tag) if base_tag else None
        ratio = (
            f"{res['sps'] / base['sps']:.2f}x | {res['peak_rss_mb'] / base['peak_rss_mb']:.2f}x"
            if base
            else "1.00x | 1.00x"
        )
        lines.append(
            f"| {name} | {params(res)} | {res['sps']:.1f} | {res['peak_rss_mb']:.0f} | {res['startup_s']:.1f} "
            f"| {base_tag or 'baseline'} | {ratio} |"
        )
    cores = os.cpu_count() or 1
    lines += [
        "",
        f"Peak RSS: ru_maxrss of the process that trains (plain loop: a fresh child process, of which "
        f"{adapter['rss_imports_mb']:.0f} MB is already there after importing torch, transformers and sentiray; "
        f"Ray: the Train worker's own report). Start-up: launch until the steady window opens (process start "
        f"or Ray + DeepSpeed start, model build, the first {args.warmup} steps)"
        + (
            "; Ray wall time in all, with its end-of-run dev pass, export and MLflow registration: "
            + ", ".join(f"{res['wall_s']:.0f}s" for name, res, _ in rows if name.startswith("(c)"))
            if not args.skip_ray
            else ""
        )
        + ".",
        f"(load average after the runs: {os.getloadavg()[0]:.1f} on {cores} cores)",
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table, flush=True)
    import mlflow

    tracking.setup(config.TrackingConfig(experiment=EXPERIMENT))
    with mlflow.start_run(run_name="throughput"):
        tracking.log_text(table, "throughput/table.md")
        for name, res, _ in rows:
            tag = name[1]
            tracking.log_metrics(
                {
                    f"{tag}_samples_per_s": res["sps"],
                    f"{tag}_peak_rss_mb": res["peak_rss_mb"],
                    f"{tag}_startup_s": res["startup_s"],
                }
            )
    return table


# --------------------------------------------------------------------------- the ablation


def train_and_test(
    raw: dict[str, Any], epochs: int, seed: int, untrained: bool = False
) -> tuple[dict[str, float], dict[str, float] | None]:
    """Train in-process; the test metrics of the epoch with the best dev selection key (and,
    with ``untrained``, those of the adapter before its first step)."""
    from sentiray.train.loop import make_scheduler

    cfg = config.validate(raw)
    torch.manual_seed(seed)
    family = families.create(cfg)
    cols = list(family.columns)
    train = [
        e for e in (family.transform(r) for r in schema.read_rows(family.data_uri(), "train", cols)) if "skip" not in e
    ]
    dev, test = (schema.read_rows(family.data_uri(), s, cols) for s in ("dev", "test"))
    model = family.build_model()
    params = family.param_groups(model)["adapter"]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, eps=cfg.train.eps, weight_decay=cfg.train.weight_decay)
    batch = cfg.train.batch_size
    scheduler = make_scheduler(opt, cfg.train, epochs * math.ceil(len(train) / batch))
    selection = family.selection()
    start = None
    if untrained:
        predictor = family.predictor(model)
        preds = _predict(predictor, test)
        start = dict(predictor.metrics(test, preds), epoch=0, unparseable=sum(bool(p["unparseable"]) for p in preds))
    best_key, best = None, {}
    for epoch in range(epochs):
        model.train()
        random.Random(seed * 100 + epoch).shuffle(train)
        for i in range(0, len(train), batch):
            loss, _ = family.loss(model, family.collate(train[i : i + batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            scheduler.step()
            opt.zero_grad()
        predictor = family.predictor(model)
        key = selection.key({f"dev_{k}": v for k, v in predictor.metrics(dev, _predict(predictor, dev)).items()})
        if best_key is None or key > best_key:
            preds = _predict(predictor, test)
            best_key = key
            best = dict(
                predictor.metrics(test, preds), epoch=epoch + 1, unparseable=sum(bool(p["unparseable"]) for p in preds)
            )
    return best, start


def _predict(predictor, rows):
    return [p for i in range(0, len(rows), 64) for p in predictor.predict(rows[i : i + 64])]


def ablation_table(args, setup: dict[str, str]) -> str:
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    untrained: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, overrides in VARIANTS:
        for seed in range(args.seeds):
            raw = raw_job(args, setup, "ablation", overrides, epochs=args.epochs, seed=seed)
            m, m0 = train_and_test(raw, args.epochs, seed, untrained=not overrides)
            results.append({"variant": name, "seed": seed, **m})
            if m0 is not None:
                untrained.append({"variant": UNTRAINED, "seed": seed, **m0})
            print(
                f"  {name:30s} seed {seed}: MAE {m['MAE']:.3f}, Has0_acc_2 {m['Has0_acc_2']:.3f}, "
                f"{m['unparseable']} unparseable (best dev epoch {m['epoch']}; {time.perf_counter() - start:.0f}s so far)",
                flush=True,
            )
    data = os.path.join(args.workdir, setup["ablation"])
    mean = statistics.fmean(r["score"] for r in schema.read_rows(data, "train", ["score"]))
    golds = [r["score"] for r in schema.read_rows(data, "test", ["score"])]
    mean_mae = statistics.fmean(abs(g - mean) for g in golds)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in results + untrained:
        groups.setdefault(row["variant"], []).append(row)

    def cell(values: list[float], scale: float, digits: int) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * sd:.{digits}f}"

    n_train, n_test = (len(schema.read_rows(data, s, ["id"])) for s in ("train", "test"))
    lines = [
        f"MSE-Adapter ablation, synthetic msa ({n_train} train / {n_test} test rows), {args.epochs} epochs, "
        f"{args.seeds} seeds (mean ± std), test split at each run's best dev epoch",
        "",
        "| variant | seeds | MAE | Has0_acc_2 (%) | unparseable answers (per run) | best dev epoch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    summary = []
    for name, members in groups.items():
        mae = [r["MAE"] for r in members]
        acc = [r["Has0_acc_2"] for r in members]
        epochs = ", ".join(str(r["epoch"]) for r in members) if name != UNTRAINED else "-"
        lines.append(
            f"| {name} | {len(members)} | {cell(mae, 1, 3)} | {cell(acc, 100, 2)} | "
            f"{statistics.fmean(r['unparseable'] for r in members):.1f} | {epochs} |"
        )
        summary.append(
            {
                "variant": name,
                "n": len(members),
                "MAE_mean": statistics.fmean(mae),
                "MAE_std": statistics.stdev(mae) if len(mae) > 1 else 0.0,
                "Has0_acc_2_mean": statistics.fmean(acc),
                "Has0_acc_2_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            }
        )
    lines.append(f"| reference: the mean predictor (train mean {mean:+.2f}) | - | {mean_mae:.3f} | - | - | - |")
    lines += [
        "",
        f"(ablation wall time {time.perf_counter() - start:.0f}s; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores)",
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table, flush=True)
    _log_ablation(table, summary, results + untrained)
    return table


def _log_ablation(table: str, summary: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    import mlflow

    from sentiray.evaluate.plots import close, plt

    tracking.setup(config.TrackingConfig(experiment=EXPERIMENT))
    with mlflow.start_run(run_name="ablation"):
        tracking.log_text(table, "ablation/table.md")
        tracking.log_json(summary, "ablation/table.json")
        tracking.log_json(results, "ablation/runs.json")
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        names = [r["variant"] for r in summary]
        for ax, metric, scale, label in (
            (axes[0], "MAE", 1, "test MAE (lower is better)"),
            (axes[1], "Has0_acc_2", 100, "test Has0_acc_2, %"),
        ):
            ax.bar(
                range(len(names)),
                [scale * r[f"{metric}_mean"] for r in summary],
                yerr=[scale * r[f"{metric}_std"] for r in summary],
                capsize=3,
            )
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
            ax.set_title(label)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        tracking.log_figure(fig, "plots/ablation.png")
        close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workdir",
        default="runs/bench-mse-adapter",
        help="models (the fitted backbone is cached here), data, Ray outputs, the MLflow store",
    )
    parser.add_argument("--rows", type=int, default=300, help="ablation rows (70/15/15 train/dev/test)")
    parser.add_argument("--epochs", type=int, default=10, help="ablation epochs (the best dev epoch is scored)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each throughput run")
    parser.add_argument(
        "--warmup", type=int, default=5, help="throughput steps before the steady window (Ray: log_every)"
    )
    parser.add_argument(
        "--throughput-hidden",
        type=int,
        default=0,
        help="throughput on a random Qwen2 of this hidden size (0: the demo backbone, 64 wide)",
    )
    parser.add_argument("--throughput-layers", type=int, default=4, help="its layers (with --throughput-hidden)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-2, help="adapter lr (the paper's Qwen-1.8B on MOSEI: 5e-3)")
    parser.add_argument(
        "--eps",
        type=float,
        default=1e-8,
        help="AdamW eps (the paper's: 1e-4, under which an adapter on the tiny demo backbone, whose "
        "gradients are ~1e-3, does not move in 10 epochs)",
    )
    parser.add_argument("--width", type=int, default=32, help="adapter width (the paper's: 256)")
    parser.add_argument("--audio-hidden", type=int, default=16)
    parser.add_argument("--vision-hidden", type=int, default=8)
    parser.add_argument(
        "--backbone-steps",
        type=int,
        default=800,
        help="steps fitting the demo backbone (cached; the demo's recipe: 150 or 300 are not steerable)",
    )
    parser.add_argument("--backbone-corpus", type=int, default=3000)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the backbone fit and the ablation "
        "(1: on an oversubscribed machine a second thread mostly waits)",
    )
    parser.add_argument(
        "--zero", type=int, nargs="+", default=[2], choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage(s)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-ray", action="store_true", help="throughput: the plain loops only")
    parser.add_argument("--skip-ablation", action="store_true")
    args = parser.parse_args()
    if args.steps % args.warmup or args.steps <= args.warmup:
        parser.error("--steps must be a multiple of --warmup, and larger (Ray reports every --warmup steps)")
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.workdir}/mlflow.db")
    torch.set_num_threads(args.threads)
    setup = prepare(args)
    if not args.skip_throughput:
        throughput(args, setup)
    if not args.skip_ablation:
        ablation_table(args, setup)
    import psutil

    wall = time.time() - psutil.Process().create_time()  # since the process started: imports included
    print(
        f"bench wall time: {wall:.0f}s (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
        flush=True,
    )


if __name__ == "__main__":
    main()
