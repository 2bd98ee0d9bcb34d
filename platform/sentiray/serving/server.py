"""The Serve deployment: HTTP and the model in one replica, requests batched into predict calls.

Why one deployment and not an ingress in front of a model deployment: every request then
crossed two Ray hops (proxy -> ingress -> model) and was pickled twice; profiled on this
project's 2-core machine the ingress cost about as much CPU per request as the model itself
and the answer came back through it. Serve's HTTP proxy already is the per-node front
door; autoscaling the model is autoscaling what parses its requests too, since parsing is
proportional to requests. So each replica parses, checks, batches and computes: one Ray
round trip per request (proxy -> replica), the image as bytes until the model thread
decodes it, nothing done per request that can be done once per replica.

In a replica, two lanes hold the model (:mod:`sentiray.serving.batching`):

- ``score``: one thread, batched ``Predictor.predict`` (label scoring: fast, exact);
- ``generate``: ``max_concurrent_generations`` threads for what writes text (chats,
  streams, chains), so a 512-token stream shares the replica instead of holding it.

The model source comes from the deployment's ``user_config`` (``{model: URI,
max_batch_size, batch_wait_timeout_s}``): changing it on a running deployment loads the new
model beside the old one, which keeps answering, then swaps the reference in one
assignment. With ``models: {id: source}`` the replica multiplexes (``@serve.multiplexed``):
each request names its model, Serve routes it to a replica holding that model, and up to
``max_models_per_replica`` stay loaded per replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from sentiray.config import ServeAppConfig
from sentiray.serving.batching import Answer, Batcher
from sentiray.serving.schemas import ApiError
from sentiray.serving.sources import LoadedModel

logger = logging.getLogger("ray.serve")

MODEL_DEPLOYMENT = "SentimentModel"


class ModelSettings(BaseModel):
    """The ``user_config`` of the deployment: what may change without restarting replicas."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, min_length=1)
    max_batch_size: int = Field(gt=0)
    batch_wait_timeout_s: float = Field(ge=0)


def compute(loaded: LoadedModel, kind: str, rows: list[dict[str, Any]], options: dict[str, Any]) -> list[Any]:
    """One batch on the model (in a lane's thread): the family's predict, or its text generation."""
    if kind == "predict":
        return loaded.predictor.predict(rows, options)
    from sentiray.data import images

    pictures = [images.decode(r["image"]) if r.get("image") else None for r in rows]
    return loaded.predictor.generate(
        [r["prompt"] for r in rows],
        pictures,
        max_new_tokens=options["max_new_tokens"],
        temperature=options["temperature"],
    )


def request_error(exc: BaseException) -> ApiError:
    """What the client of a row that failed alone is told: its input (ValueError, e.g. an image
    the processor refuses) is a 422; anything else is our fault, a 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValueError):
        return ApiError(
            422, f"the model could not process this input ({type(exc).__name__}: {exc})", "unprocessable_input"
        )
    logger.error("sentiray: prediction failed", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__}); see the server log", "internal_error")


def _generate_streaming(
    loaded: LoadedModel,
    prompt: str,
    image: bytes | None,
    options: dict[str, Any],
    streamer: Any,
    cancelled: threading.Event,
) -> Any:
    """One answer, handed to ``streamer`` as it comes; ``cancelled`` stops it (the client left)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from sentiray.data import images

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    try:
        picture = images.decode(image) if image else None
        return loaded.predictor.generate(
            [prompt],
            [picture],
            max_new_tokens=options["max_new_tokens"],
            temperature=options["temperature"],
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
        )[0]
    except BaseException:
        streamer.end()  # else the consumer would wait for text forever
        raise


@serve.deployment(name=MODEL_DEPLOYMENT)
@serve.ingress()
class SentimentModel:
    def __init__(self, app_args: dict[str, Any]):
        from sentiray import families
        from sentiray.serving.endpoints import endpoint_settings

        self.cfg = ServeAppConfig.model_validate(app_args)
        if self.cfg.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.cfg.tracking_uri
        family = families.family_class(self.cfg.family or "mulcot")
        self.family_name = family.name
        self.endpoints = tuple(family.endpoints)
        self.supports_chat = family.predictor_class.supports_chat
        self.settings = endpoint_settings(self.endpoints, self.cfg)
        self.capacity = self.cfg.capacity
        self.started = int(time.time())
        self.inflight = 0  # HTTP requests inside this replica (admission)
        self.arriving = 0  # of those, being parsed: a batch may wait for them
        self._loaded: LoadedModel | None = None
        self._infos: dict[str, dict[str, Any]] = {}
        self._swap_lock = asyncio.Lock()
        generations = self.cfg.max_concurrent_generations
        self._generate_pool = ThreadPoolExecutor(generations, thread_name_prefix="sentiray-generate")
        self._generate_slots = asyncio.Semaphore(generations)
        arriving = lambda: self.arriving
        self.lanes = {
            "score": Batcher(
                compute,
                ThreadPoolExecutor(1, thread_name_prefix="sentiray-score"),
                asyncio.Semaphore(1),
                self.cfg.max_batch_size,
                self.cfg.batch_wait_timeout_s,
                arriving,
            ),
            "generate": Batcher(
                compute,
                self._generate_pool,
                self._generate_slots,
                self.cfg.max_batch_size,
                self.cfg.batch_wait_timeout_s,
                arriving,
            ),
        }
        if self.cfg.models:

            async def load_by_id(model_id: str) -> LoadedModel:
                return await asyncio.to_thread(self._load, model_id, self.cfg.models[model_id])

            self._multiplexed = serve.multiplexed(max_num_models_per_replica=self.cfg.max_models_per_replica)(
                load_by_id
            )
        # A single model comes with the user_config, in reconfigure(), which Serve calls right
        # after __init__: loading it here too would load it twice.

    def __serve_build_asgi_app__(self) -> FastAPI:
        from sentiray.serving.ingress import create_app

        return create_app(self)

    # ----------------------------------------------------------------- models

    def _load(self, model_id: str, uri: str) -> LoadedModel:
        from sentiray.serving import sources
        from sentiray.serving.endpoints import ParseContext, takes_images

        loaded = sources.load(model_id, uri, self.cfg)
        manifest = dict(loaded.predictor.manifest)
        dims = getattr(loaded.predictor, "feature_dims", None)  # what a feature model reads (audio/vision widths)
        if dims and "feature_dims" not in manifest:
            manifest["feature_dims"] = dict(dims)
        loaded.context = ParseContext(self.cfg.limits, manifest, self.settings, takes_images(manifest))
        self._infos[model_id] = loaded.info
        logger.info("sentiray: loaded %s (%s)", model_id, loaded.info)
        return loaded

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        defaults = {
            "model": self.cfg.model,
            "max_batch_size": self.cfg.max_batch_size,
            "batch_wait_timeout_s": self.cfg.batch_wait_timeout_s,
        }
        settings = ModelSettings.model_validate({**defaults, **(user_config or {})})
        for lane in self.lanes.values():
            lane.max_batch_size = settings.max_batch_size
            lane.batch_wait_timeout_s = settings.batch_wait_timeout_s
        if self.cfg.models:
            if settings.model and settings.model != self.cfg.model:
                raise ValueError("user_config.model: this application multiplexes args.models; change those instead")
            return
        async with self._swap_lock:
            if self._loaded is not None and self._loaded.uri == settings.model:
                return
            old = self._loaded.info if self._loaded else None
            # In a thread: the old model keeps answering while the new one loads.
            loaded = await asyncio.to_thread(self._load, self.cfg.served_model_name, settings.model)
            self._loaded = loaded  # the swap: batches already running keep their model
            logger.info("sentiray: serving %s (was %s)", loaded.info, old)

    async def model_for(self, model_id: str | None) -> LoadedModel:
        """The model a request names (None: the app's one model); 404 naming the known ids."""
        known = list(self.cfg.sources)
        if model_id is not None and model_id not in known:
            served = f"this endpoint serves {known[0]!r}" if not self.cfg.models else f"known: {known}"
            raise ApiError(404, f"model {model_id!r} is not served here; {served}", "model_not_found")
        if not self.cfg.models:
            if self._loaded is None:  # only if a Serve YAML set user_config to null
                await self.reconfigure({})
            return self._loaded
        if model_id is None:
            raise ApiError(
                400,
                f"model: name one of {known} (the serve_multiplexed_model_id header, or the body's model field)",
                "model_required",
            )
        try:
            return await self._multiplexed(model_id)
        except Exception:  # logged; the client gets a 503, not the traceback
            logger.exception("sentiray: loading %s failed", model_id)
            raise ApiError(
                503,
                f"model {model_id!r} could not be loaded; see the server log",
                "model_unavailable",
                {"Retry-After": "5"},
            ) from None

    def model_info(self, model_id: str) -> dict[str, Any] | None:
        return self._infos.get(model_id)

    def ready(self) -> bool:
        return self._loaded is not None or bool(self.cfg.models)

    # ----------------------------------------------------------------- computing

    async def predict(
        self, loaded: LoadedModel, rows: list[Any], options: dict[str, Any], lane: str, kind: str = "predict"
    ) -> Answer:
        """The outputs of one request's rows, computed in a batch of its lane."""
        try:
            return await self.lanes[lane].submit(loaded, kind, rows, options)
        except Exception as exc:  # noqa: BLE001 - mapped: the input's fault (4xx) or ours (500, logged)
            raise request_error(exc) from None

    async def stream(self, loaded: LoadedModel, prompt: str, image: bytes | None, options: dict[str, Any]):
        """Events of one streamed generation: delta (text) ..., end (usage); holds a generation slot."""
        from transformers import AsyncTextIteratorStreamer

        async with self._generate_slots:
            if loaded.tokenizer is None:
                from transformers import AutoTokenizer

                loaded.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, loaded.folder)
            streamer = AsyncTextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
            cancelled = threading.Event()
            future = asyncio.get_running_loop().run_in_executor(
                self._generate_pool, _generate_streaming, loaded, prompt, image, options, streamer, cancelled
            )
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure after we left: seen, logged
            # Generation strips the answer; the stream does the same, holding back whitespace
            # until text follows it, so streamed and plain answers are equal.
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
                out = await future
            finally:
                cancelled.set()  # the client left (or we failed): stop generating
        finish = "length" if out.new_tokens >= options["max_new_tokens"] else "stop"
        yield {
            "event": "end",
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.new_tokens,
            "finish_reason": finish,
        }
