"""``sentiray loadtest URL``: closed-loop load against an endpoint; requests/s and latency percentiles.

``concurrency`` clients each send the payload, wait for the whole answer, and send again,
for ``duration`` seconds. Requests/s counts successful (2xx) answers; latency percentiles
are over those; other statuses are counted apart (a 503 means the endpoint shed load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SENTIMENT = {"text": "What a lovely day at the beach, everyone is smiling!"}
DEFAULT_CHAT = {
    "model": "sentiray-student",
    "messages": [{"role": "user", "content": "What a lovely day!"}],
    "max_tokens": 16,
}


@dataclass
class LoadResult:
    url: str
    concurrency: int
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    statuses: Counter = field(default_factory=Counter)  # HTTP status (or "error: <exception>") -> count

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 3),
            "requests": self.requests,
            "ok": self.ok,
            "rps": round(self.rps, 2),
            "p50_ms": round(self.percentile(50), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "errors": {str(k): v for k, v in self.statuses.items() if not (isinstance(k, int) and 200 <= k < 300)},
        }

    def summary(self) -> str:
        d = self.as_dict()
        return (
            f"{self.url}  concurrency {self.concurrency}  {self.duration_s:.1f} s\n"
            f"requests {d['requests']}  ok {d['ok']}  errors {d['errors'] or 'none'}\n"
            f"requests/s {d['rps']:.1f}  latency ms  p50 {d['p50_ms']:.1f}  p95 {d['p95_ms']:.1f}  p99 {d['p99_ms']:.1f}"
        )


async def _load(
    url: str, payload: dict[str, Any], concurrency: int, duration_s: float, headers: dict[str, str], timeout_s: float
) -> LoadResult:
    import aiohttp

    result = LoadResult(url, concurrency, duration_s)
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **headers}
    # One connection per client, so that concurrency means requests in flight.
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + duration_s

        async def client() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status: Any = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = f"error: {type(exc).__name__}"
                result.statuses[status] += 1
                if isinstance(status, int) and 200 <= status < 300:
                    result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                elif not isinstance(status, int) or status == 503:
                    await asyncio.sleep(0.05)  # do not spin on a refusing endpoint

        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.duration_s = time.perf_counter() - start
    return result


def run_load(
    url: str,
    payload: dict[str, Any] | None = None,
    concurrency: int = 8,
    duration_s: float = 10.0,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> LoadResult:
    """Drive ``url`` with ``concurrency`` closed-loop clients for ``duration_s`` seconds."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("concurrency must be >= 1 and duration > 0")
    if payload is None:
        payload = DEFAULT_CHAT if url.rstrip("/").endswith("/chat/completions") else DEFAULT_SENTIMENT
    return asyncio.run(_load(url, payload, concurrency, duration_s, headers or {}, timeout_s))


# --------------------------------------------------------------------------- command line


def cmd_loadtest(args: argparse.Namespace) -> int:
    from sentiray.config import ConfigError

    if args.concurrency < 1 or args.duration <= 0:
        raise ConfigError(f"--concurrency must be >= 1 and --duration > 0 (got {args.concurrency}, {args.duration})")
    payload = None
    if args.payload:
        try:
            with open(args.payload) as f:
                payload = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"payload {args.payload}: {exc}") from None
    headers = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that variable is not set")
        headers["Authorization"] = f"Bearer {key}"
    result = run_load(args.url, payload, args.concurrency, args.duration, headers, args.timeout)
    print(json.dumps(result.as_dict()) if args.json else result.summary())
    return 0 if result.ok else 1


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "loadtest", help="drive an endpoint with concurrent requests; print requests/s and latency percentiles"
    )
    p.add_argument("url", help="full URL, e.g. http://127.0.0.1:8000/v1/sentiment")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--payload", help="JSON file with the request body (default: a short post, or a chat message)")
    p.add_argument("--api-key-env", help="environment variable holding the API key")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_loadtest)
