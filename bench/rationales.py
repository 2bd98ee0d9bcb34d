"""Benchmark of the `rationales` stage.

1. hf backend: rows/s of the Ray Data pipeline (the stage itself, 1 and 2 actors) against a
   plain single-process loop over the same model, batch size, prompts and per-batch code
   (:func:`sentiray.teacher.pipeline.teach`), with the same torch threads per worker.
   With one worker the ratio should be close to 1: what Ray Data adds is scheduling and
   transfers, small next to generation.
2. openai backend: requests/s achieved against a loopback chat-completions server
   (tests/teacher/openai_server.py) with a fixed simulated latency, at several
   concurrencies, against the ideal that the server's latency and the concurrency allow:
   ``concurrency / latency`` (latency measured one request at a time). Measured for the
   client alone and for the whole stage.

    python bench/rationales.py [--rows 512] [--max-new-tokens 48] [--workers 1 2]

Everything runs on CPU with the tiny random VLM (sampled at temperature 1 so that it writes
text); rows/s are about the machinery, not the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.teacher.openai_server, the loopback server
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def _job(root: str, input_uri: str, output: str, teacher: dict):
    from sentiray import config

    raw = {
        "stage": "rationales",
        "storage": {"root": root},
        "tracking": {"enabled": False},
        "data": {"format": "canonical", "input": input_uri, "output": output, "overwrite": True},
        "teacher": {"splits": ["train"], "rationalize_splits": [], **teacher},
    }
    return config.validate(raw, "bench")


def _quiet(fn, *args, **kw):
    """Run ``fn`` with its stdout (the stage's progress lines) discarded."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def bench_hf(root: str, data: str, vlm: str, batch: int, tokens: int, workers: list[int], repeat: int) -> list[tuple]:
    """Best of ``repeat`` runs of each: on a shared machine the other load comes and goes."""
    import torch

    from sentiray.data import schema
    from sentiray.teacher import pipeline
    from sentiray.teacher.backends import HFBackend

    teacher = {
        "backend": "hf",
        "model": {"path": vlm},
        "temperature": 1.0,
        "max_new_tokens": tokens,
        "batch_size": batch,
        "num_cpus": 1,
        "shard_rows": 128,
    }
    work = schema.read_table(data, "train").select(list(pipeline.WORK_COLUMNS)).to_pylist()
    plan = pipeline.Plan(teacher="bench")

    def plain_loop() -> tuple[float, float]:
        # same backend, same per-batch code, one process, one torch thread (as one actor has)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            backend = HFBackend(vlm, max_new_tokens=tokens, temperature=1.0, batch_size=batch)
            done = len(pipeline.teach(backend, work[:batch], plan))
            first, first_at = done, time.perf_counter()
            for i in range(batch, len(work), batch):
                done += len(pipeline.teach(backend, work[i : i + batch], plan))
            end = time.perf_counter()
        finally:
            torch.set_num_threads(threads)
        return done / (end - start), (done - first) / (end - first_at)

    def stage(n: int) -> tuple[float, float]:
        m = _quiet(pipeline.run, _job(root, data, f"out-hf-{n}", {**teacher, "concurrency": n}))["metrics"]
        return m["rows_per_s"], m["rows_per_s_steady"]

    runs: dict[int, list[tuple[float, float]]] = {0: []}
    for n in workers:
        runs[n] = []
    for _ in range(repeat):  # interleaved, so that a burst of other load does not hit one config only
        runs[0].append(plain_loop())
        for n in workers:
            runs[n].append(stage(n))
    plain_all = max(r[0] for r in runs[0])
    plain_steady = max(r[1] for r in runs[0])
    results = [("plain loop, 1 process", 1, plain_all, plain_steady, 1.0)]
    for n in workers:
        best_all, best_steady = max(r[0] for r in runs[n]), max(r[1] for r in runs[n])
        results.append((f"Ray Data, {n} actor(s)", n, best_all, best_steady, best_steady / plain_steady))
    return results


def bench_openai(root: str, data: str, vlm: str, delay: float, concurrencies: list[int]) -> list[tuple]:
    from sentiray import prompts
    from sentiray.data import schema
    from sentiray.teacher import pipeline
    from sentiray.teacher.backends import OpenAIBackend, Request
    from tests.conftest import free_port
    from tests.teacher.openai_server import ServerProcess

    results = []
    reqs = [Request(r["id"], prompts.render("chain", r), r["image"]) for r in schema.read_rows(data, "train")]
    with ServerProcess(vlm, free_port(), delay_s=delay, max_tokens_cap=4) as server:
        # the latency one request sees (sequential), and the server's own generation time
        client = OpenAIBackend(server.url, "tiny", max_new_tokens=4, temperature=1.0, concurrency=1)
        client.answer(reqs[:3])  # warm up
        start = time.perf_counter()
        client.answer(reqs[:20])
        latency = (time.perf_counter() - start) / 20
        for c in concurrencies:
            ideal = c / latency  # Little's law: requests in flight / time each one takes
            client = OpenAIBackend(server.url, "tiny", max_new_tokens=4, temperature=1.0, concurrency=c)
            server.control(max_in_flight=0)
            start = time.perf_counter()
            out = client.answer(reqs)
            rate = len(out) / (time.perf_counter() - start)
            assert all(a.error is None for a in out)
            results.append(
                (
                    f"client alone, concurrency {c}",
                    c,
                    latency,
                    ideal,
                    rate,
                    rate / ideal,
                    server.health()["max_in_flight"],
                )
            )
            teacher = {
                "backend": "openai",
                "endpoint": server.url,
                "endpoint_model": "tiny",
                "temperature": 1.0,
                "max_new_tokens": 4,
                "concurrency": c,
                "batch_size": 2 * c,
                "shard_rows": 128,
            }
            server.control(max_in_flight=0)
            summary = _quiet(pipeline.run, _job(root, data, f"out-openai-{c}", teacher))
            rate = summary["metrics"]["rows_per_s_steady"]  # one request per row here (pass 1 only)
            results.append(
                (
                    f"stage (Ray Data), concurrency {c}",
                    c,
                    latency,
                    ideal,
                    rate,
                    rate / ideal,
                    server.health()["max_in_flight"],
                )
            )
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--delay-s", type=float, default=0.25, help="openai: the server's simulated latency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    p.add_argument("--openai-rows", type=int, default=384)
    p.add_argument("--repeat", type=int, default=2, help="hf: best of this many runs per configuration")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-openai", action="store_true")
    args = p.parse_args(argv)

    import ray

    from sentiray.data import schema, synthetic
    from sentiray.models.tiny import build_tiny_models

    root = tempfile.mkdtemp(prefix="sentiray-bench-")
    vlm = build_tiny_models(os.path.join(root, "models"))["vlm"]
    data = os.path.join(root, "data")
    schema.write_dataset(synthetic.generate("msc", args.rows, seed=0, split_ratios=(1.0, 0.0, 0.0)), data)
    openai_data = os.path.join(root, "data-openai")
    schema.write_dataset(synthetic.generate("msc", args.openai_rows, seed=1, split_ratios=(1.0, 0.0, 0.0)), openai_data)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"machine: {os.cpu_count()} CPUs; {args.rows} rows; tiny VLM; writing under {root}\n")

    if not args.skip_hf:
        rows = bench_hf(root, data, vlm, args.batch_size, args.max_new_tokens, args.workers, args.repeat)
        print(
            f"hf backend: batch {args.batch_size}, {args.max_new_tokens} new tokens, 1 CPU (1 torch thread) per "
            f"worker, best of {args.repeat}"
        )
        print(f"{'pipeline':<26} {'workers':>7} {'rows/s all':>10} {'rows/s steady':>13} {'steady vs plain':>15}")
        for name, n, rate, steady, ratio in rows:
            print(f"{name:<26} {n:>7} {rate:>10.2f} {steady:>13.2f} {ratio:>15.2f}")
        print(
            "(all: from the start, loading the model and starting the actors included; steady: from the first "
            "answers on)\n"
        )
    if not args.skip_openai:
        rows = bench_openai(root, openai_data, vlm, args.delay_s, args.concurrency)
        print(
            f"openai backend: {args.openai_rows} requests, loopback server, {args.delay_s}s simulated latency, "
            "one generation at a time"
        )
        print(
            f"{'what':<34} {'conc.':>5} {'latency s':>9} {'ideal req/s':>11} {'req/s':>8} {'of ideal':>8} "
            f"{'max in flight':>13}"
        )
        for name, c, latency, ideal, rate, ratio, peak in rows:
            print(f"{name:<34} {c:>5} {latency:>9.3f} {ideal:>11.2f} {rate:>8.2f} {ratio:>8.2f} {peak:>13}")
        print(
            "(ideal = concurrency / latency at concurrency 1; stage: from its first answers on. The server "
            "generates one request at a time, which caps high concurrencies)"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
