"""What a ``ray.train.report`` per log step costs a fast training loop.

    python bench/train_reports.py [--steps 150] [--step-ms 20] [--log-every 5]

Ray Train (v2) takes one report per worker each time its controller polls the workers
(every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default); a report made before the
last one was taken waits. The same plain loop (one worker, a small MLP, steps padded to
``--step-ms`` of compute) runs twice on Ray Train: reporting the loss every
``--log-every`` steps (what sentiray's loop did before), and reporting once per epoch
(what it does now: step logs go to MLflow, the progress file and the console). Prints the
steps' samples/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import time


def loop(config: dict) -> None:
    import ray.train
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64), torch.randn(32, 1)
    steps, per_epoch = config["steps"], config["steps"] // config["epochs"]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        began = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        while time.perf_counter() - began < config["step_ms"] / 1000:  # a model that takes step_ms
            pass
        if config["log_every"] and step % config["log_every"] == 0:
            ray.train.report({"loss": loss.item(), "step": step})
        if step % per_epoch == 0:
            ray.train.report({"loss": loss.item(), "step": step})
    with open(config["out"], "w") as f:  # the steps' rate (a result without a checkpoint has no metrics)
        f.write(str(steps * x.shape[0] / (time.perf_counter() - start)))


def run(args, log_every: int) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = os.path.join(args.storage, f"rate-{log_every}")
    config = {"steps": args.steps, "epochs": args.epochs, "step_ms": args.step_ms, "log_every": log_every, "out": out}
    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name=f"reports-{log_every}", storage_path=args.storage),
    )
    trainer.fit()
    with open(out) as f:
        return float(f.read())


def main() -> None:
    import tempfile

    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--log-every", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as storage:
        args.storage = storage
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        per_step = run(args, args.log_every)
        per_epoch = run(args, 0)
        ray.shutdown()
    print(
        f"\n{args.steps} steps of about {args.step_ms:g} ms (batch 32), {args.epochs} epochs, one Ray Train worker\n"
        "\n| reports | samples/s | vs a report per epoch |\n| --- | --- | --- |\n"
        f"| every {args.log_every} steps (before) | {per_step:.0f} | {per_step / per_epoch:.2f} |\n"
        f"| one per epoch (now) | {per_epoch:.0f} | 1.00 |\n"
        f"\nthroughput ratio (one per epoch / every {args.log_every} steps): {per_epoch / per_step:.2f}x"
    )


if __name__ == "__main__":
    main()
