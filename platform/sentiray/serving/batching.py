"""Dynamic batching in a replica: requests -> one predict call per batch, a bad row failing alone.

Each lane (label scoring; text generation) has a fixed number of slots (threads that hold
the model). A batch is formed only when a slot is free: it takes every queued request for
the same model and options, up to ``max_batch_size`` rows, so under load the batch is
whatever queued while the previous one computed, and an idle model starts at once. It
waits up to ``batch_wait_timeout_s`` for more only while other requests are already inside
the replica (being parsed), so a lone request never waits for company that is not coming.

Ray Serve's ``@serve.batch`` is not used: in Ray 2.60 it forms the next batch while the
previous one still computes (its concurrency cap is taken inside the batch task), so under
load its batches stay as small as what arrives within the timeout.

When a predict call raises, the batch is split in halves and each half is retried, until
the request that fails alone is found: it gets its error, the others their answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

# compute(model, kind, rows, options) -> one output per row, run in the lane's thread.
Compute = Callable[[Any, str, list[Any], dict[str, Any]], list[Any]]


@dataclass
class Answer:
    """One request's outputs (one per row) and how its batch ran."""

    outputs: list[Any]
    model_ms: float
    queue_ms: float
    batch_size: int
    batch_failures: int = 0  # requests of the batch that failed alone (isolating them is in model_ms)


@dataclass(eq=False)
class _Request:
    model: Any
    kind: str
    rows: list[Any]
    options: dict[str, Any]
    key: tuple
    future: asyncio.Future
    queued_at: float


def isolate(compute: Compute, model: Any, kind: str, groups: list[list[Any]], options: dict[str, Any]) -> list[Any]:
    """Outputs per group (a request's rows) from one compute call; when it fails, the halves
    are retried until each failing group stands alone: its item is then the exception."""
    rows = [row for group in groups for row in group]
    try:
        outputs = compute(model, kind, rows, options)
        if len(outputs) != len(rows):
            raise RuntimeError(f"{kind} returned {len(outputs)} outputs for {len(rows)} rows")
    except Exception as exc:  # noqa: BLE001 - whatever a row raised is its request's answer
        if len(groups) == 1:
            return [exc]
        mid = len(groups) // 2
        return isolate(compute, model, kind, groups[:mid], options) + isolate(
            compute, model, kind, groups[mid:], options
        )
    out, start = [], 0
    for group in groups:
        out.append(outputs[start : start + len(group)])
        start += len(group)
    return out


class Batcher:
    """One lane: a queue, ``slots`` batches computing at once on ``executor``."""

    def __init__(
        self,
        compute: Compute,
        executor: Executor,
        slots: asyncio.Semaphore,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        arriving: Callable[[], int],
    ):
        self.compute = compute
        self.executor = executor
        self.slots = slots
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.arriving = arriving
        self._queue: deque[_Request] = deque()
        self._added = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    async def submit(self, model: Any, kind: str, rows: list[Any], options: dict[str, Any]) -> Answer:
        """The request's outputs; raises what its rows raised (alone) in compute."""
        loop = asyncio.get_running_loop()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._loop())
        key = (id(model), kind, json.dumps(options, sort_keys=True, default=str))
        request = _Request(model, kind, rows, options, key, loop.create_future(), time.perf_counter())
        self._queue.append(request)
        self._added.set()
        return await request.future  # a client that leaves cancels it: the batch skips it

    async def _loop(self) -> None:
        while True:
            await self._wait_for_work()
            # Then a slot (a stream may hold the others), then the batch: it takes all that queued meanwhile.
            await self.slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self.slots.release()
                raise
            if not batch:  # every waiting client left meanwhile
                self.slots.release()
                continue
            asyncio.get_running_loop().create_task(self._run(batch))  # it releases the slot

    def _drop_left(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    async def _wait_for_work(self) -> None:
        self._drop_left()
        while not self._queue:
            self._added.clear()
            await self._added.wait()
            self._drop_left()

    def _rows_ready(self, key: tuple) -> int:
        return sum(len(r.rows) for r in self._queue if r.key == key and not r.future.done())

    async def _next_batch(self) -> list[_Request]:
        self._drop_left()
        if not self._queue:
            return []
        key = self._queue[0].key
        deadline = time.perf_counter() + self.batch_wait_timeout_s
        while self._rows_ready(key) < self.max_batch_size and self.arriving() > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._added.clear()
            try:
                await asyncio.wait_for(self._added.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._take(key)

    def _take(self, key: tuple) -> list[_Request]:
        """Queued requests of ``key`` in arrival order, up to max_batch_size rows (at least one)."""
        batch, rows, rest = [], 0, deque()
        while self._queue:
            request = self._queue.popleft()
            if request.future.done():
                continue
            fits = not batch or rows + len(request.rows) <= self.max_batch_size
            if request.key == key and fits:
                batch.append(request)
                rows += len(request.rows)
            else:
                rest.append(request)
        self._queue = rest
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        start = time.perf_counter()
        first = batch[0]
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self.executor, isolate, self.compute, first.model, first.kind, [r.rows for r in batch], first.options
            )
        except BaseException as exc:  # noqa: BLE001 - the executor itself failed (shut down): nobody gets an answer
            outcomes = [exc] * len(batch)
        finally:
            # Before the answers: the loop forms the next batch first (its wake-up is queued
            # ahead of the handlers'), so the model never idles while answers are written.
            self.slots.release()
        model_ms = (time.perf_counter() - start) * 1000
        size = sum(len(r.rows) for r in batch)
        failures = sum(isinstance(o, BaseException) for o in outcomes)
        for request, outcome in zip(batch, outcomes):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(Answer(outcome, model_ms, (start - request.queued_at) * 1000, size, failures))
