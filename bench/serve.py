"""Serving benchmark: requests/s and latency percentiles of batched Serve, unbatched Serve and
the bare model called in-process (the physical limit), at concurrency 1, 8 and 32.

    python bench/serve.py                       # tiny VLM, label scoring (text + image), 8 s per cell
    python bench/serve.py --chain-tokens 32     # with a 32-token reasoning chain per request
    python bench/serve.py --model runs/demo/checkpoints/student/model --duration 20

Each Serve mode is one model replica with one CPU (torch on one thread); the bare model
runs here on one thread too, computing ``min(concurrency, max_batch_size)`` requests per
call with the server's own batch function, so every request of a call waits for the
whole call, as in a perfectly filled batch with no transport. The load generator shares
the machine with Serve: on a small machine its CPU use is part of what Serve's rows pay.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import sys
import tempfile
import time

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_model(model_path: str, post: dict, concurrency: int, max_batch: int, chain_tokens: int, duration_s: float) -> dict:
    import torch
    from sentiray.data import images
    from sentiray.models.generation import Generator
    from sentiray.models.loading import load_model
    from sentiray.serving.model_server import LoadedModel, ModelJob, run_batch
    from sentiray import prompts

    torch.set_num_threads(1)
    model, processor = load_model(model_path, kind="vlm", for_generation=True)
    loaded = LoadedModel(Generator(model, processor), {"name": "bench", "version": None, "uri": model_path})
    row = {"text": post["text"], "task": "msc"}
    image = images.decode(post["image"])
    job = ModelJob(label_prompt=prompts.render("label", row), image=image, max_new_tokens=max(chain_tokens, 1),
                   gen_prompt=prompts.render("chain", row) if chain_tokens else None)
    batch = [job] * min(concurrency, max_batch)
    labels = ["positive", "neutral", "negative"]
    run_batch(loaded, batch, labels)  # warm up
    latencies, done = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s:
        t = time.perf_counter()
        run_batch(loaded, batch, labels)
        latencies += [(time.perf_counter() - t) * 1000] * len(batch)
        done += len(batch)
    elapsed = time.perf_counter() - start
    return {"rps": done / elapsed, "p50": np.percentile(latencies, 50), "p95": np.percentile(latencies, 95),
            "p99": np.percentile(latencies, 99), "errors": {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder of a VLM (default: the tiny one, built if needed)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--chain-tokens", type=int, default=0, help="also generate a chain of this many tokens")
    args = parser.parse_args()

    import ray
    from ray import serve
    from sentiray.data import synthetic
    from sentiray.serving.app import build_app, start_serve, wait_running
    from sentiray.serving.loadtest import run_load

    model_path = args.model
    if not model_path:
        from sentiray.models.tiny import build_tiny_models

        model_path = build_tiny_models(os.path.join(tempfile.gettempdir(), "sentiray-bench-models"))["vlm"]
    post = synthetic.generate("msc", 20, seed=1).splits["train"][0]
    payload = {"text": post["text"], "image": base64.b64encode(post["image"]).decode()}
    if args.chain_tokens:
        payload.update(chain=True, max_tokens=args.chain_tokens)

    top = max(args.concurrency)
    common = {"model": model_path, "min_replicas": 1, "max_replicas": 1, "num_cpus": 1,
              "max_ongoing_requests": max(top, args.max_batch_size), "max_queued_requests": -1}
    modes = {
        "serve batched": {**common, "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": 0.005},
        "serve unbatched": {**common, "max_batch_size": 1, "batch_wait_timeout_s": 0.0},
    }
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    base = start_serve("127.0.0.1", free_port())
    rows = []
    try:
        for name, app_args in modes.items():
            prefix = "/" + name.replace(" ", "-")
            serve.run(build_app(app_args), name=name.replace(" ", "-"), route_prefix=prefix, blocking=False)
            wait_running([name.replace(" ", "-")])
            url = f"{base}{prefix}/v1/sentiment"
            for c in args.concurrency:
                run_load(url, payload, concurrency=c, duration_s=1.0)  # warm up connections and the batcher
                r = run_load(url, payload, concurrency=c, duration_s=args.duration)
                rows.append((name, c, {"rps": r.rps, "p50": r.percentile(50), "p95": r.percentile(95),
                                       "p99": r.percentile(99), "errors": r.as_dict()["errors"]}))
                print(f"  {name:<16} c={c:<3} {r.rps:8.1f} req/s", file=sys.stderr, flush=True)
            serve.delete(name.replace(" ", "-"))
    finally:
        serve.shutdown()
        ray.shutdown()
    for c in args.concurrency:
        rows.append(("bare model", c, bare_model(model_path, post, c, args.max_batch_size, args.chain_tokens, args.duration)))

    what = f"label scoring + {args.chain_tokens}-token chain" if args.chain_tokens else "label scoring (text + image)"
    print(f"\nserving benchmark: {what}, max_batch_size {args.max_batch_size}, {args.duration:.0f} s per cell, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'mode':<16} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
    for name, c, m in rows:
        print(f"{name:<16} {c:>4} {m['rps']:>8.1f} {m['p50']:>8.1f} {m['p95']:>8.1f} {m['p99']:>8.1f}  {m['errors'] or '-'}")
    by = {(n, c): m["rps"] for n, c, m in rows}
    print("\nthroughput ratios")
    for c in args.concurrency:
        bare = by[("bare model", c)]
        print(f"  c={c:<3} batched/bare {by[('serve batched', c)] / bare:.2f}  unbatched/bare {by[('serve unbatched', c)] / bare:.2f}"
              f"  batched/unbatched {by[('serve batched', c)] / by[('serve unbatched', c)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
