"""Serving benchmark: requests/s and latency percentiles of batched Serve, unbatched Serve and
the bare model called in-process (the physical limit), at concurrency 1, 8 and 32.

    python bench/serve.py                       # tiny VLM, label scoring (text + image), 8 s per cell
    python bench/serve.py --chain-tokens 32     # with a 32-token reasoning chain per request
    python bench/serve.py --model runs/demo/checkpoints/student/model --duration 20

Serve's ingress is the one ``sentiray serve`` gives a local cluster: HAProxy in front of
replicas that serve HTTP themselves (``--python-proxy``: Serve's Python proxy actor instead).
Each Serve mode is one replica with one CPU (torch on one thread) serving HTTP and the model;
the bare model runs here on one thread too, calling the family's ``Predictor.predict`` (the
function the replica calls) on ``min(concurrency, max_batch_size)`` rows per call, so every
request of a call waits for the whole call, as in a perfectly filled batch with no
transport. The three modes of one concurrency are measured one after the other (both Serve
applications stay deployed), so that they see the same machine: other work on it moves all
three together. The load generator shares the machine with Serve: on a small machine its
CPU use is part of what Serve's rows pay. Run it on a quiet machine: the 1-minute load
average is printed before and after.
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


class BareModel:
    """The family's predictor in this process, on one thread: the physical limit."""

    def __init__(self, model_path: str, post: dict, chain_tokens: int):
        import torch

        from sentiray import families

        torch.set_num_threads(1)
        self.predictor = families.load_predictor(model_path)
        # The row a request becomes in the server (MulCoT's /v1/sentiment parse): text + image bytes.
        self.row = {"text": post["text"], "aspect": None, "image": post["image"]}
        self.options = {"chain": True, "max_new_tokens": chain_tokens} if chain_tokens else {"chain": False}
        self.predictor.predict([self.row], self.options)  # warm up

    def run(self, concurrency: int, max_batch: int, duration_s: float) -> dict:
        rows = [self.row] * min(concurrency, max_batch)
        self.predictor.predict(rows, self.options)
        latencies, done = [], 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration_s:
            t = time.perf_counter()
            self.predictor.predict(rows, self.options)
            latencies += [(time.perf_counter() - t) * 1000] * len(rows)
            done += len(rows)
        elapsed = time.perf_counter() - start
        return {
            "rps": done / elapsed,
            "p50": np.percentile(latencies, 50),
            "p95": np.percentile(latencies, 95),
            "p99": np.percentile(latencies, 99),
            "errors": {},
        }


def served(url: str, payload: dict, concurrency: int, duration_s: float) -> dict:
    from sentiray.clients.loadtest import run_load

    run_load(url, payload, concurrency=concurrency, duration_s=1.0)  # warm up connections and the batcher
    r = run_load(url, payload, concurrency=concurrency, duration_s=duration_s)
    return {
        "rps": r.rps,
        "p50": r.percentile(50),
        "p95": r.percentile(95),
        "p99": r.percentile(99),
        "errors": r.as_dict()["errors"],
    }


def measure(model_path: str, post: dict, payload: dict, args: argparse.Namespace) -> list[tuple[str, int, dict]]:
    """Every cell: per concurrency, batched Serve, unbatched Serve, then the bare model."""
    import ray
    from ray import serve

    from sentiray.serving.app import build_app, start_serve, wait_running

    top = max(args.concurrency)
    common = {
        "model": model_path,
        "min_replicas": 1,
        "max_replicas": 1,
        "num_cpus": 1,
        "max_ongoing_requests": max(top, args.max_batch_size),
        "max_queued_requests": -1,
    }
    modes = {
        "serve batched": {**common, "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": 0.005},
        "serve unbatched": {**common, "max_batch_size": 1, "batch_wait_timeout_s": 0.0},
    }
    from sentiray import runtime

    if args.python_proxy:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    runtime.set_serve_env()  # the ingress a local cluster started by sentiray has (HAProxy)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    base = start_serve("127.0.0.1", free_port())
    cells = []
    try:
        urls = {}
        for name, app_args in modes.items():
            app = name.replace(" ", "-")
            serve.run(build_app(app_args), name=app, route_prefix=f"/{app}", blocking=False)
            wait_running([app])
            urls[name] = f"{base}/{app}/v1/sentiment"
        bare = BareModel(model_path, post, args.chain_tokens)
        for c in args.concurrency:
            for name, url in urls.items():
                cells.append((name, c, served(url, payload, c, args.duration)))
            cells.append(("bare model", c, bare.run(c, args.max_batch_size, args.duration)))
            for name, _, m in cells[-3:]:
                print(
                    f"  {name:<16} c={c:<3} {m['rps']:8.1f} req/s  (load {load_average()})", file=sys.stderr, flush=True
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    order = [*modes, "bare model"]
    return sorted(cells, key=lambda cell: (order.index(cell[0]), args.concurrency.index(cell[1])))


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder of a VLM (default: the tiny one, built if needed)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--chain-tokens", type=int, default=0, help="also generate a chain of this many tokens")
    parser.add_argument(
        "--python-proxy", action="store_true", help="Serve's Python proxy actor as the ingress instead of HAProxy"
    )
    args = parser.parse_args()

    from sentiray.data import synthetic

    model_path = args.model
    if not model_path:
        from sentiray.models.tiny import build_tiny_models

        model_path = build_tiny_models(os.path.join(tempfile.gettempdir(), "sentiray-bench-models"))["vlm"]
    post = synthetic.generate("msc", 20, seed=1).splits["train"][0]
    payload = {"text": post["text"], "image": base64.b64encode(post["image"]).decode()}
    if args.chain_tokens:
        payload.update(chain=True, max_tokens=args.chain_tokens)

    load_before = load_average()
    rows = measure(model_path, post, payload, args)

    what = f"label scoring + {args.chain_tokens}-token chain" if args.chain_tokens else "label scoring (text + image)"
    ingress = "Serve's Python proxy" if args.python_proxy else "HAProxy (direct ingress)"
    print(
        f"\nserving benchmark: {what}, max_batch_size {args.max_batch_size}, {args.duration:.0f} s per cell, "
        f"{os.cpu_count()} CPU cores, ingress {ingress}"
    )
    print(f"machine load (1-minute average): {load_before} before, {load_average()} after")
    print(f"{'mode':<16} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
    for name, c, m in rows:
        print(
            f"{name:<16} {c:>4} {m['rps']:>8.1f} {m['p50']:>8.1f} {m['p95']:>8.1f} {m['p99']:>8.1f}  {m['errors'] or '-'}"
        )
    by = {(n, c): m["rps"] for n, c, m in rows}
    print("\nthroughput ratios")
    for c in args.concurrency:
        bare = by[("bare model", c)]
        print(
            f"  c={c:<3} batched/bare {by[('serve batched', c)] / bare:.2f}  unbatched/bare {by[('serve unbatched', c)] / bare:.2f}"
            f"  batched/unbatched {by[('serve batched', c)] / by[('serve unbatched', c)]:.2f}"
        )
    if len(args.concurrency) > 1:
        # what batching gives the model itself: the most batched/unbatched can reach once the
        # transport costs little per request
        low, high = min(args.concurrency), max(args.concurrency)
        print(
            f"  bare model c={high} / c={low} (batches of {min(high, args.max_batch_size)} vs "
            f"{min(low, args.max_batch_size)} rows): {by[('bare model', high)] / by[('bare model', low)]:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
