"""Training throughput: Ray Train + DeepSpeed against a plain PyTorch loop, and ZeRO memory.

    python bench/train.py [--steps 30] [--batch-size 4] [--hidden 256] [--layers 4]

Same model (a LLaVA-style VLM, built here at the requested size), same data (synthetic
msc with gold chains), same batch, same loss (MulCoT assistant: chain + label streams).
Prints one table:
- plain PyTorch loop, one process on one thread (the baseline: what a 1-CPU worker gets),
  and on every core
- Ray Train + DeepSpeed ZeRO-0/2/3 on one worker (ratio vs plain: overhead of the stack)
- Ray Train + DeepSpeed ZeRO-2 on two workers (scaling; on this 2-core machine both
  workers share the cores, so expect well under 2x)
with samples/s and each run's peak resident memory per worker process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "platform"))

from sentiray import (  # noqa: E402
    config,
    families,  # noqa: E402
    stages,
)
from sentiray.data import schema  # noqa: E402
from sentiray.data.prepare import run as prepare  # noqa: E402


def build_model(root: str, hidden: int, layers: int) -> str:
    """A VLM with the tiny model's tokenizer and vision tower, and a text model of the given size."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from sentiray.models.tiny import build_tiny_vlm

    tiny = build_tiny_vlm(os.path.join(root, "tiny"))
    processor = AutoProcessor.from_pretrained(tiny)
    cfg = AutoModelForImageTextToText.from_pretrained(tiny).config
    cfg.text_config.hidden_size = hidden
    cfg.text_config.intermediate_size = hidden * 4
    cfg.text_config.num_hidden_layers = layers
    cfg.text_config.layer_types = ["full_attention"] * layers  # per-layer list in transformers 5
    cfg.text_config.num_attention_heads = max(2, hidden // 64)
    cfg.text_config.num_key_value_heads = max(1, hidden // 128)
    cfg.text_config.head_dim = hidden // cfg.text_config.num_attention_heads
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg)
    out = os.path.join(root, f"vlm-{hidden}x{layers}")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def job(root: str, model: str, steps: int, batch: int, workers: int, zero: int, name: str) -> config.JobConfig:
    return config.validate(
        {
            "stage": "train",
            "name": name,
            "storage": {"root": root},
            "ray": {"num_cpus": 2},
            "tracking": {"enabled": True, "experiment": "bench-train", "run_name": name},
            "data": {"format": "canonical", "input": "data"},
            "model": {"path": model, "kind": "vlm"},
            "mulcot": {"role": "assistant", "chain_column": "gold_chain"},
            "train": {
                "output": f"out/{name}",
                "epochs": 1000,
                "max_steps": steps,
                "batch_size": batch,
                "num_workers": workers,
                "zero_stage": zero,
                "log_every": steps,
                "lr": 1e-3,
                "scheduler": "constant",
                "keep_checkpoints": 1,
            },
        }
    )


def plain_loop(cfg: config.JobConfig, steps: int, threads: int) -> tuple[float, float]:
    """The baseline: the same family's batches and loss, torch AdamW, no Ray, no DeepSpeed,
    on ``threads`` torch threads (a Ray Train worker with one CPU runs with one: OMP_NUM_THREADS=1)."""
    torch.set_num_threads(threads)
    family = families.create(cfg)
    rows = schema.read_rows(family.data_uri(), "train")
    model = family.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    batch = cfg.train.batch_size
    start = time.perf_counter()
    for step in range(steps):
        chunk = [family.transform(rows[(step * batch + i) % len(rows)]) for i in range(batch)]
        loss, _ = family.loss(model, family.collate(chunk))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return steps * batch / seconds, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-train-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    prepare(
        config.validate(
            {
                "stage": "data",
                "storage": {"root": root},
                "data": {"format": "synthetic", "task": "msc", "size": 400, "output": "data"},
            }
        )
    )
    model, n_params = build_model(root, args.hidden, args.layers)
    print(
        f"model: {n_params / 1e6:.1f}M parameters; {args.steps} optimizer steps of batch {args.batch_size} per worker\n"
    )

    rows = []
    # The baseline gets what one Ray Train worker gets (cpus_per_worker=1, so one thread); the
    # all-cores row shows what a single process could use instead.
    base_sps, base_mem = plain_loop(job(root, model, args.steps, args.batch_size, 1, 0, "plain"), args.steps, threads=1)
    rows.append(("plain PyTorch loop, 1 thread (baseline)", 1, "-", base_sps, base_mem))
    cores = os.cpu_count() or 1
    sps, mem = plain_loop(job(root, model, args.steps, args.batch_size, 1, 0, "plain"), args.steps, threads=cores)
    rows.append((f"plain PyTorch loop, {cores} threads", 1, "-", sps, mem))
    for workers, zero in ((1, 0), (1, 2), (1, 3), (2, 2)):
        name = f"ray-w{workers}-z{zero}"
        summary = stages.run_stage(job(root, model, args.steps, args.batch_size, workers, zero, name))
        final = summary["final"]
        rows.append((f"Ray Train + DeepSpeed ZeRO-{zero}", workers, zero, final["samples_per_s"], final["peak_rss_mb"]))

    print("\n| path | workers | samples/s | vs plain | peak RSS per worker (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for name, workers, _, sps, mem in rows:
        print(f"| {name} | {workers} | {sps:.1f} | {sps / base_sps:.2f}x | {mem:.0f} |")


if __name__ == "__main__":
    main()
