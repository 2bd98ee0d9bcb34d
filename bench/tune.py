"""ASHA against running every trial to the end, on the same search space.

    python bench/tune.py [--trials 8] [--max-t 4] [--metric train_ce_l --mode min] [--size 120]

Both sweeps sample the same trials (random search, same seed): the FIFO sweep trains each
for ``--max-t`` epochs, the ASHA sweep (grace period 1, reduction factor 2) stops the
trials that are behind at epochs 1, 2, 4, ... Each trial is a real Ray Train run of the
tiny VLM (the assistant's multi-task loss) on synthetic posts, on a local Ray cluster
with ``--cpus`` logical CPUs (2 per trial: its driver and one Train worker).

Prints one table: per scheduler, the trials run to the end and stopped early, the
trial-epochs spent, the wall time, the best metric reached and by which trial; then
whether ASHA kept the trial that the full run found best.

The default metric is the epoch's label-stream training loss: on tiny models trained for a
few epochs, dev accuracy over a few dozen posts is still a constant-class guess that ties
every trial, which would leave ASHA nothing to compare (``--metric dev_accuracy --mode max``
shows it).
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


def sweep(root: str, model: str, scheduler: str, args: argparse.Namespace) -> config.JobConfig:
    return config.validate(
        {
            "stage": "tune",
            "name": f"bench-{scheduler}",
            "storage": {"root": root},
            "ray": {"num_cpus": args.cpus},
            "tracking": {"experiment": "bench-tune"},
            "data": {"format": "canonical", "input": "data"},
            "model": {"path": model, "kind": "vlm"},
            "mulcot": {"role": "assistant", "chain_column": "gold_chain", "max_length": 256},
            "train": {
                "output": "unused",
                "epochs": args.max_t,
                "batch_size": 8,
                "zero_stage": 0,
                "num_workers": 1,
                "keep_checkpoints": 1,
                "log_every": 5,
            },
            "tune": {
                "searcher": "random",
                "seed": args.seed,
                "num_samples": args.trials,
                "scheduler": scheduler,
                "grace_period": 1,
                "reduction_factor": 2,
                "metric": args.metric,
                "mode": args.mode,
                "output": f"tune/{scheduler}",
                "search_space": {"train.lr": {"loguniform": [1e-5, 3e-2]}, "mulcot.w_chain": {"uniform": [0.5, 1.5]}},
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-t", dest="max_t", type=int, default=4, help="epochs of a trial run to the end")
    parser.add_argument("--metric", default="train_ce_l")
    parser.add_argument("--mode", default="min", choices=["min", "max"])
    parser.add_argument("--size", type=int, default=120, help="synthetic posts (80%% train, 10%% dev)")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args()

    root = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="sentiray-bench-tune-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{os.path.join(root, 'mlflow.db')}")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    from sentiray.models.tiny import build_tiny_vlm

    prepare(
        config.validate(
            {
                "stage": "data",
                "storage": {"root": root},
                "tracking": {"enabled": False},
                "data": {"format": "synthetic", "task": "msc", "size": args.size, "output": "data"},
            }
        )
    )
    model = build_tiny_vlm(os.path.join(root, "vlm"))

    results = {}
    for scheduler in ("fifo", "asha"):
        start = time.perf_counter()
        summary = stages.run_stage(sweep(root, model, scheduler, args))
        results[scheduler] = (summary, time.perf_counter() - start)

    def hp(row) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v:.3g}" for k, v in row["hp"].items())

    print(
        f"\n{args.trials} trials (random search, seed {args.seed}), up to {args.max_t} epochs each, "
        f"metric {args.metric} ({args.mode}); workdir {root}\n"
    )
    head = (
        f"{'scheduler':<10} {'to the end':>10} {'stopped':>8} {'trial-epochs':>13} {'wall s':>7} "
        f"{'best ' + args.metric:>18}  best trial"
    )
    print(head)
    print("-" * len(head))
    for scheduler, (s, seconds) in results.items():
        best = s["table"][0]
        print(
            f"{scheduler:<10} {s['completed']:>10} {s['early_stopped']:>8} {s['trial_epochs']:>13} {seconds:>7.0f} "
            f"{s['best']:>18.4f}  {hp(best)}"
        )
    fifo, asha = results["fifo"][0], results["asha"][0]
    saved = 1 - asha["trial_epochs"] / fifo["trial_epochs"]
    same = {k: round(v, 12) for k, v in fifo["table"][0]["hp"].items()} == {
        k: round(v, 12) for k, v in asha["table"][0]["hp"].items()
    }
    print(
        f"\nASHA spent {saved:.0%} fewer trial-epochs; its best is "
        f"{'the same trial' if same else 'a different trial'} as the full run's "
        f"({args.metric} {asha['best']:.4f} vs {fifo['best']:.4f})."
    )


if __name__ == "__main__":
    main()
