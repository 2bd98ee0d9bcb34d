"""Training input at scale: rows streamed through Ray Data vs every worker holding the split.

    python bench/data_scale.py [--sizes 1000 10000 100000] [--steps 40] [--workers 1]
    python bench/data_scale.py --sizes 480 --epochs 3 --workers 2     # small data, whole epochs

For each size, a synthetic msc train split (small 32x32 images, Parquet shards of 2000
rows) and the same training job (MulCoT assistant on the tiny VLM, ``--steps`` optimizer
steps of batch 8, a 200-row dev split) run twice: ``train.stream=true`` (the train split
read in blocks by Ray Data, the family's transform in Ray Data actors, each worker
iterating its shard) and ``train.stream=false`` (each worker reads the split into Python
rows and transforms in the step loop). Prints peak resident memory per training worker and
samples/s of the steps (from the loop's own step reports), the run's wall-clock seconds
(start-up, every epoch's input, dev evaluation and export included), and the
streamed/in-memory ratios. The goal: streamed RSS flat within 20% from the smallest to the
largest size, and samples/s within 5% of in-memory. ``--epochs N`` trains N whole epochs
instead of ``--steps``: on small data the streamed path starts its Ray Data pipeline again
every epoch, and the in-memory path transforms each row once (``train.cache_mb``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "platform"))

from sentiray import config, stages  # noqa: E402
from sentiray.data.prepare import run as prepare  # noqa: E402


def data(root: str, size: int) -> str:
    out = f"data-{size}"
    prepare(
        config.validate(
            {
                "stage": "data",
                "storage": {"root": root},
                "data": {
                    "format": "synthetic",
                    "task": "msc",
                    "size": size + 400,
                    "output": out,
                    "image_size": 32,
                    "split_ratios": [size / (size + 400), 200 / (size + 400), 200 / (size + 400)],
                },
            }
        )
    )
    return out


def train(root: str, model: str, data_uri: str, stream: bool, args) -> dict:
    name = f"{data_uri}-{'stream' if stream else 'memory'}"
    length = {"epochs": args.epochs} if args.epochs else {"epochs": 1, "max_steps": args.steps}
    start = time.perf_counter()
    summary = stages.run_stage(
        config.validate(
            {
                "stage": "train",
                "name": name,
                "storage": {"root": root},
                "ray": {"num_cpus": 4},
                "tracking": {"experiment": "bench-data-scale", "run_name": name},
                "data": {"format": "canonical", "input": data_uri},
                "model": {"path": model},
                "mulcot": {"role": "assistant", "chain_column": "gold_chain"},
                "train": {
                    "output": f"out/{name}",
                    **length,
                    "batch_size": 8,
                    "lr": 1e-3,
                    "num_workers": args.workers,
                    "zero_stage": 0,
                    "log_every": 10 if args.epochs else args.steps // 2,
                    "stream": stream,
                    "scheduler": "constant",
                    "keep_checkpoints": 1,
                },
            }
        )
    )
    seconds = time.perf_counter() - start
    import mlflow

    client = mlflow.MlflowClient()
    run = client.search_runs(
        [client.get_experiment_by_name("bench-data-scale").experiment_id],
        filter_string=f"attributes.run_name = '{name}'",
    )[0]
    steps = sorted(client.get_metric_history(run.info.run_id, "samples_per_s"), key=lambda m: m.step)
    return {"sps": steps[-1].value, "rss": summary["final"]["peak_rss_mb"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="whole epochs instead of --steps")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-data-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    from sentiray.models.tiny import build_tiny_vlm

    model = build_tiny_vlm(os.path.join(root, "vlm"))
    results = {}
    for size in args.sizes:
        uri = data(root, size)
        for stream in (True, False):
            results[(size, stream)] = train(root, model, uri, stream, args)
            print(f"{size} rows, {'streamed' if stream else 'in memory'}: {results[(size, stream)]}", flush=True)
    print(
        "\n| train rows | streamed RSS (MB) | in-memory RSS (MB) | streamed samples/s | in-memory samples/s "
        "| RSS streamed / in-memory | samples/s streamed / in-memory | streamed s | in-memory s "
        "| seconds streamed / in-memory |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        s, m = results[(size, True)], results[(size, False)]
        print(
            f"| {size} | {s['rss']:.0f} | {m['rss']:.0f} | {s['sps']:.1f} | {m['sps']:.1f} | "
            f"{s['rss'] / m['rss']:.2f} | {s['sps'] / m['sps']:.2f} | {s['seconds']:.0f} | {m['seconds']:.0f} | "
            f"{s['seconds'] / m['seconds']:.2f} |"
        )
    first, last = results[(args.sizes[0], True)], results[(args.sizes[-1], True)]
    print(
        f"\nstreamed RSS from {args.sizes[0]} to {args.sizes[-1]} rows: {last['rss'] / first['rss']:.2f}x "
        f"(goal: within 1.20x)"
    )


if __name__ == "__main__":
    main()
