"""The model deployment: one loaded student per replica, requests batched with ``@serve.batch``.

Every request becomes a :class:`ModelJob`: score the labels (one forward pass per label,
:meth:`Generator.label_logprobs`), generate text (:meth:`Generator.generate`), or both.
Jobs that arrive within ``batch_wait_timeout_s`` of each other run as one batch, up to
``max_batch_size``: one label-scoring call for all of them, one generation call per
group of equal (max_new_tokens, temperature).

The model runs in one worker thread per replica, so the replica's event loop stays free
to accept requests (and fill the next batch) while a batch computes, and two batches never
share the model at once. The model source comes from the deployment's ``user_config``
(``{model: URI, max_batch_size, batch_wait_timeout_s}``): changing it on a running
deployment loads the new model beside the old one, which keeps answering, then swaps
the reference in one assignment. No request fails or waits for the swap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from sentiray.config import ServeAppConfig

logger = logging.getLogger("ray.serve")


@dataclass
class ModelJob:
    """One request's work: score ``label_prompt`` over the labels and/or generate from ``gen_prompt``."""

    label_prompt: str | None = None
    gen_prompt: str | None = None
    image: Any = None  # PIL.Image or None
    max_new_tokens: int = 256
    temperature: float = 0.0
    count_prompt_tokens: bool = False  # chat completions report usage


@dataclass
class JobResult:
    probabilities: list[float] | None
    text: str | None
    new_tokens: int
    prompt_tokens: int | None
    finish_reason: str | None
    batch_size: int
    label_ms: float
    gen_ms: float
    model: dict[str, Any] = field(default_factory=dict)  # ModelInfo fields


class ModelSettings(BaseModel):
    """The ``user_config`` of the model deployment: what may change without restarting replicas."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    max_batch_size: int = Field(gt=0)
    batch_wait_timeout_s: float = Field(ge=0)


@dataclass
class LoadedModel:
    generator: Any  # sentiray.models.generation.Generator
    info: dict[str, Any]  # name, version, uri


# --------------------------------------------------------------------------- model sources


def _registry_client():
    import mlflow

    from sentiray import tracking

    uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient()


def resolve_source(uri: str) -> tuple[str, dict[str, Any]]:
    """``(local HF folder, {name, version, uri})`` for any model source.

    A registry alias or ``latest`` is pinned to its version number first, so the files
    loaded and the version reported are the same even if the alias moves meanwhile.
    """
    from sentiray.models import registry

    if uri.startswith("models:/"):
        rest = uri[len("models:/") :].strip("/")
        client = _registry_client()
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, _, version = rest.partition("/")
            if version in ("", "latest"):
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ValueError(f"registered model {name!r} has no versions")
                version = str(max(int(v.version) for v in versions))
        folder = registry.resolve_model_uri(f"models:/{name}/{version}")
        return folder, {"name": name, "version": str(version), "uri": uri}
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].partition("/")
        folder = registry.resolve_model_uri(uri)
        return folder, {"name": path.strip("/").split("/")[-1] or run_id, "version": run_id, "uri": uri}
    folder = registry.resolve_model_uri(uri)
    return folder, {"name": os.path.basename(uri.rstrip("/")) or uri, "version": None, "uri": uri}


def load(uri: str, cfg: ServeAppConfig) -> LoadedModel:
    """Resolve, load, move to this replica's GPU if Ray gave it one, warm up."""
    import ray

    from sentiray.models.generation import Generator
    from sentiray.models.loading import load_model

    folder, info = resolve_source(uri)
    model, processor = load_model(folder, kind=cfg.kind, dtype=cfg.dtype, for_generation=True)
    # The YAML's ray_actor_options decide the GPU, not our args: ask Ray what we got.
    if ray.is_initialized() and ray.get_gpu_ids():
        model = model.to("cuda")
    generator = Generator(model, processor)
    # One tiny forward pass, so that the first real request pays no lazy initialisation.
    generator.label_logprobs(["warm up"], [None], cfg.labels)
    return LoadedModel(generator, info)


# --------------------------------------------------------------------------- batch computation


def run_batch(loaded: LoadedModel, jobs: list[ModelJob], labels: list[str]) -> list[JobResult]:
    """Compute a batch of jobs with one model: all label scoring at once, generation grouped."""
    import torch

    gen = loaded.generator
    probs: dict[int, list[float]] = {}
    texts: dict[int, tuple[str, int]] = {}
    start = time.perf_counter()
    scored = [i for i, j in enumerate(jobs) if j.label_prompt is not None]
    if scored:
        logp = gen.label_logprobs([jobs[i].label_prompt for i in scored], [jobs[i].image for i in scored], labels)
        for row, i in zip(torch.softmax(logp, dim=-1).tolist(), scored):
            probs[i] = row
    scored_at = time.perf_counter()
    # generate() takes one max_new_tokens and temperature per call: group by them.
    groups: dict[tuple[int, float], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        if job.gen_prompt is not None:
            groups[(job.max_new_tokens, job.temperature)].append(i)
    for (max_new, temperature), idx in groups.items():
        outs = gen.generate([jobs[i].gen_prompt for i in idx], [jobs[i].image for i in idx], max_new_tokens=max_new, temperature=temperature)
        for i, out in zip(idx, outs):
            texts[i] = (out.text, out.new_tokens)
    done = time.perf_counter()
    results = []
    for i, job in enumerate(jobs):
        text, new_tokens = texts.get(i, (None, 0))
        prompt_tokens = None
        if job.count_prompt_tokens and job.gen_prompt is not None:
            prompt_tokens = len(gen.encoder.encode_prompt(job.gen_prompt, job.image).input_ids)
        finish = None
        if text is not None:
            finish = "length" if new_tokens >= job.max_new_tokens else "stop"
        results.append(
            JobResult(
                probabilities=probs.get(i),
                text=text,
                new_tokens=new_tokens,
                prompt_tokens=prompt_tokens,
                finish_reason=finish,
                batch_size=len(jobs),
                label_ms=(scored_at - start) * 1000,
                gen_ms=(done - scored_at) * 1000,
                model=dict(loaded.info),
            )
        )
    return results


def _generate_streaming(generator: Any, job: ModelJob, streamer: Any, cancelled: threading.Event) -> tuple[int, int]:
    """Generate one answer, handing text to ``streamer`` as it comes; returns (prompt_tokens, new_tokens).

    ``cancelled`` stops it early when the client goes away.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    try:
        out = generator.generate(
            [job.gen_prompt], [job.image], max_new_tokens=job.max_new_tokens, temperature=job.temperature,
            streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancelled()]),
        )[0]
    except BaseException:
        streamer.end()  # else the consumer would wait for text forever
        raise
    return out.prompt_tokens, out.new_tokens


# --------------------------------------------------------------------------- the deployment


@serve.deployment(name="SentimentModel")
class SentimentModel:
    def __init__(self, app_args: dict[str, Any]):
        self.cfg = ServeAppConfig.model_validate(app_args)
        if self.cfg.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.cfg.tracking_uri
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentiray-model")
        self._loaded: LoadedModel | None = None
        self._swap_lock = asyncio.Lock()
        # The model itself comes with the user_config, in reconfigure(), which Serve
        # calls right after __init__: loading it here too would load it twice.

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        defaults = {"model": self.cfg.model, "max_batch_size": self.cfg.max_batch_size,
                    "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s}
        settings = ModelSettings.model_validate({**defaults, **(user_config or {})})
        self._run_batch.set_max_batch_size(settings.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        async with self._swap_lock:
            if self._loaded is not None and self._loaded.info["uri"] == settings.model:
                return
            old = self._loaded.info["uri"] if self._loaded else None
            # In a thread: the old model keeps answering while the new one loads.
            loaded = await asyncio.to_thread(load, settings.model, self.cfg)
            self._loaded = loaded  # the swap: batches already running keep their model
            logger.info("sentiray: serving %s (was %s)", loaded.info, old)

    async def _current(self) -> LoadedModel:
        if self._loaded is None:  # only if a Serve YAML set user_config to null
            await self.reconfigure({})
        return self._loaded

    async def info(self) -> dict[str, Any]:
        return dict((await self._current()).info)

    async def run(self, job: ModelJob) -> JobResult:
        return await self._run_batch(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _run_batch(self, jobs: list[ModelJob]) -> list[JobResult]:
        loaded = await self._current()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run_batch, loaded, jobs, self.cfg.labels)

    async def stream(self, job: ModelJob) -> AsyncIterator[dict[str, Any]]:
        """Events of one streamed generation: start (model), delta (text) ..., end (usage)."""
        from transformers import AsyncTextIteratorStreamer

        loaded = await self._current()
        yield {"event": "start", "model": dict(loaded.info)}
        tokenizer = loaded.generator.encoder.tokenizer
        streamer = AsyncTextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, _generate_streaming, loaded.generator, job, streamer, cancelled)
        # Generator.generate strips the answer; the stream does the same, holding back
        # whitespace until text follows it, so streamed and plain answers are equal.
        started, held = False, ""
        try:
            async for text in streamer:
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                text = held + text
                body = text.rstrip()
                held = text[len(body) :]
                if body:
                    yield {"event": "delta", "text": body}
            prompt_tokens, new_tokens = await future
        finally:
            cancelled.set()  # the client left (or we failed): stop generating
        finish = "length" if new_tokens >= job.max_new_tokens else "stop"
        yield {"event": "end", "prompt_tokens": prompt_tokens, "completion_tokens": new_tokens, "finish_reason": finish}
