"""The HTTP front door: a FastAPI app in its own Serve deployment, in front of the model.

Routes (OpenAPI schema at ``/openapi.json``):

- ``POST /v1/sentiment``: label, class probabilities, optional reasoning chain;
- ``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, streaming
  with server-sent events, so any OpenAI client can call the student;
- ``GET /healthz`` (the process answers) and ``GET /readyz`` (a model replica answers).

The ingress does everything cheap (auth, body size, parsing, limits, image decoding,
prompt rendering) so that a bad request is refused with a 4xx before it costs model time,
and the model deployment receives only well-formed :class:`ModelJob` s. Every error has
one JSON shape, ``{"error": {"message", "type", "code"}}``, the one the openai client reads.

The app is built per replica (``__serve_build_asgi_app__``) because the API key, the
limits and the model handle are only known there.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from sentiray.config import ServeAppConfig
from sentiray.serving.model_server import ModelJob
from sentiray.serving.schemas import (
    ApiError,
    ChatCompletion,
    ChatRequest,
    ErrorBody,
    ImagePart,
    ModelCard,
    ModelInfo,
    ModelList,
    SentimentRequest,
    SentimentResponse,
    TextPart,
    check_features,
    check_max_tokens,
    check_text,
    decode_image,
    format_validation_errors,
)

logger = logging.getLogger("ray.serve")

# Probes answer without the API key: they carry no data and a prober holds no secret.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
READY_TIMEOUT_S = 5.0

_ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    503: "overloaded_error",
}


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------- middleware


def _route_path(scope: dict[str, Any]) -> str:
    """The path inside the app, without the application's route prefix."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class Guard:
    """ASGI middleware: the API key on every route but the probes, the body size before parsing."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode("latin-1")
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

    def _too_large(self, size: int | str) -> JSONResponse:
        return error_response(413, f"request body: {size} bytes, the limit is {self.max_body_bytes}", "payload_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and _route_path(scope) not in PROBE_PATHS and not self._authorized(headers):
            response = error_response(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key", {"WWW-Authenticate": "Bearer"}
            )
            return await response(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await error_response(400, "Content-Length is not a number", "bad_request")(scope, receive, send)
            if int(declared) > self.max_body_bytes:
                return await self._too_large(int(declared))(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Read the body here (FastAPI would buffer it all the same), stopping at the limit.
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await self._too_large(f"more than {self.max_body_bytes}")(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------- helpers


def api_key_from_env(cfg: ServeAppConfig) -> str | None:
    """The key named by ``api_key_env``; a named but unset variable stops the replica (fail closed)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise RuntimeError(
            f"api_key_env is {cfg.api_key_env!r} but that variable is not set (or empty) in the ingress replica's "
            "environment: set it on the cluster (or in the deployment's runtime_env), or remove api_key_env"
        )
    return key


async def call_model(response: Any) -> Any:
    """Await a handle call; an overloaded or missing model deployment becomes a 503 with Retry-After."""
    try:
        return await response
    except BackPressureError as exc:
        raise overloaded(exc.message, exc.retry_after_s) from None
    except DeploymentUnavailableError as exc:
        raise ApiError(503, f"model unavailable: {exc.message}", "unavailable", {"Retry-After": "5"}) from None


def overloaded(message: str, retry_after_s: float | None) -> ApiError:
    retry = max(1, math.ceil(retry_after_s if retry_after_s is not None else 1))
    return ApiError(503, f"overloaded, retry in {retry} s ({message})", "overloaded", {"Retry-After": str(retry)})


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _fingerprint(info: dict[str, Any]) -> str:
    return f"{info['name']}/{info['version']}" if info.get("version") else info["name"]


# --------------------------------------------------------------------------- the app


def create_app(model: Any, cfg: ServeAppConfig) -> FastAPI:
    """The FastAPI app of one ingress replica; ``model`` is the handle of the model deployment."""
    from sentiray import __version__
    from sentiray import prompts
    from sentiray.prompts.parsing import parse_label

    limits = cfg.limits
    takes_images = cfg.kind == "vlm"
    started = int(time.time())
    errors = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 503)}

    app = FastAPI(
        title="sentiray",
        version=__version__,
        description="Multimodal sentiment with reasoning chains; OpenAI-compatible chat completions.",
        openapi_url=None,  # served below, behind the API key like every route but the probes
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(Guard, api_key=api_key_from_env(cfg), max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(400, f"request body is not valid JSON ({format_validation_errors(errs)})", "invalid_json")
        return error_response(422, format_validation_errors(errs), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def _bug(_, exc: Exception):
        logger.exception("sentiray: unexpected error")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", "internal_error")

    # ----------------------------------------------------------------- probes

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, str]:
        response = model.info.remote()
        try:
            await asyncio.wait_for(_awaited(response), READY_TIMEOUT_S)
        except (asyncio.TimeoutError, RayError, RayServeException) as exc:
            response.cancel()
            raise ApiError(503, f"model not ready ({type(exc).__name__})", "not_ready", {"Retry-After": "5"}) from None
        return {"status": "ready"}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    # ----------------------------------------------------------------- sentiment

    @app.post("/v1/sentiment", response_model=SentimentResponse, responses=errors, tags=["sentiment"])
    async def sentiment(req: SentimentRequest) -> SentimentResponse:
        start = time.perf_counter()
        check_text("text", req.text, limits.max_text_chars)
        aspect = req.aspect or None
        if aspect is not None:
            check_text("aspect", aspect, limits.max_aspect_chars)
        if not req.text.strip() and req.image is None:
            raise ApiError(422, "text: empty, and no image: send text, an image or both", "empty_request")
        image = None
        if req.image is not None:
            if not takes_images:
                raise ApiError(400, f"image: this model ({cfg.kind}) reads text only", "images_not_supported")
            image = decode_image("image", req.image, limits)
        warnings = []
        for name in ("audio", "vision"):
            shape = check_features(name, getattr(req, name), limits)
            if shape:
                warnings.append(
                    f"{name} features ({shape[0]}x{shape[1]}) accepted but not used: this model reads text and images"
                )
        if req.max_tokens is not None:
            check_max_tokens("max_tokens", req.max_tokens, limits)
        max_new = req.max_tokens or cfg.chain_max_new_tokens
        row = {"text": req.text, "aspect": aspect, "task": "masc" if aspect else cfg.task}
        job = ModelJob(
            label_prompt=prompts.render("label", row, cfg.prompts_dir),
            gen_prompt=prompts.render("chain", row, cfg.prompts_dir) if req.chain else None,
            image=image,
            max_new_tokens=max_new,
        )
        result = await call_model(model.run.remote(job))
        probabilities = dict(zip(cfg.labels, result.probabilities))
        return SentimentResponse(
            label=max(probabilities, key=probabilities.get),
            probabilities=probabilities,
            chain=result.text,
            chain_label=parse_label(result.text, cfg.labels) if req.chain else None,
            model=ModelInfo(**result.model),
            timings={
                "total_ms": (time.perf_counter() - start) * 1000,
                "model_ms": result.label_ms + result.gen_ms,
                "label_ms": result.label_ms,
                "chain_ms": result.gen_ms,
                "batch_size": result.batch_size,
            },
            warnings=warnings,
        )

    # ----------------------------------------------------------------- OpenAI

    @app.get("/v1/models", response_model=ModelList, responses=errors, tags=["openai"])
    async def models() -> ModelList:
        info = await call_model(model.info.remote())
        return ModelList(data=[ModelCard(id=cfg.served_model_name, created=started, source=ModelInfo(**info))])

    def user_input(req: ChatRequest) -> tuple[str, Any]:
        """The text and the image of the last user message: the student answers single prompts."""
        if len(req.messages) > limits.max_messages:
            raise ApiError(422, f"messages: {len(req.messages)} messages, the limit is {limits.max_messages}", "too_many_messages")
        users = [i for i, m in enumerate(req.messages) if m.role == "user"]
        if not users:
            raise ApiError(400, "messages: no message with role 'user'", "no_user_message")
        at = users[-1]
        content = req.messages[at].content
        field = f"messages[{at}].content"
        if content is None:
            texts, urls = [], []
        elif isinstance(content, str):
            texts, urls = [content], []
        else:
            texts = [p.text for p in content if isinstance(p, TextPart)]
            urls = [p.image_url.url for p in content if isinstance(p, ImagePart)]
        text = "\n".join(texts)
        check_text(field, text, limits.max_text_chars)
        if len(urls) > 1:
            raise ApiError(400, f"{field}: {len(urls)} images, this model takes one per request", "too_many_images")
        image = None
        if urls:
            if not takes_images:
                raise ApiError(400, f"{field}: this model ({cfg.kind}) reads text only", "images_not_supported")
            image = decode_image(f"{field}.image_url", urls[0], limits)
        if not text.strip() and image is None:
            raise ApiError(400, f"{field}: no text and no image", "empty_message")
        return text, image

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=errors, tags=["openai"])
    async def chat_completions(req: ChatRequest):
        if req.model != cfg.served_model_name:
            raise ApiError(404, f"model {req.model!r} is not served here; this endpoint serves {cfg.served_model_name!r}", "model_not_found")
        if req.n != 1:
            raise ApiError(400, f"n: {req.n} choices asked, only n=1 is supported", "unsupported")
        text, image = user_input(req)
        max_new = req.max_completion_tokens or req.max_tokens or cfg.chat_max_new_tokens
        check_max_tokens("max_completion_tokens" if req.max_completion_tokens else "max_tokens", max_new, limits)
        job = ModelJob(gen_prompt=text, image=image, max_new_tokens=max_new, temperature=req.temperature or 0.0,
                       count_prompt_tokens=True)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await stream_completion(job, completion_id, created, include_usage)
        result = await call_model(model.run.remote(job))
        prompt_tokens = result.prompt_tokens or 0
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=cfg.served_model_name,
            system_fingerprint=_fingerprint(result.model),
            choices=[{"index": 0, "message": {"role": "assistant", "content": result.text or ""}, "finish_reason": result.finish_reason}],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": result.new_tokens,
                   "total_tokens": prompt_tokens + result.new_tokens},
        )

    async def stream_completion(job: ModelJob, completion_id: str, created: int, include_usage: bool) -> StreamingResponse:
        events = model.options(stream=True).stream.remote(job)
        # The first event arrives once a replica took the request: an overload is still a
        # proper 503 here, before the 200 and the event stream have started.
        try:
            first = await call_model(events.__anext__())
        except StopAsyncIteration:
            raise ApiError(503, "model ended the stream before it started", "unavailable") from None
        info = first["model"]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return _sse({
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": cfg.served_model_name, "system_fingerprint": _fingerprint(info),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })

        async def body():
            try:
                yield chunk({"role": "assistant", "content": ""})
                end = None
                async for event in events:
                    if event["event"] == "delta":
                        yield chunk({"content": event["text"]})
                    elif event["event"] == "end":
                        end = event
                yield chunk({}, end["finish_reason"])
                if include_usage:
                    usage = {"prompt_tokens": end["prompt_tokens"], "completion_tokens": end["completion_tokens"],
                             "total_tokens": end["prompt_tokens"] + end["completion_tokens"]}
                    yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                "model": cfg.served_model_name, "choices": [], "usage": usage})
            except Exception as exc:  # the 200 is sent: report in the stream, as OpenAI does
                logger.exception("sentiray: stream failed")
                yield _sse({"error": {"message": f"stream failed ({type(exc).__name__})", "type": "server_error", "code": "internal_error"}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


async def _awaited(response: Any) -> Any:
    return await response


# --------------------------------------------------------------------------- the deployment


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, model: Any, app_args: dict[str, Any]):
        self.model = model
        self.cfg = ServeAppConfig.model_validate(app_args)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.model, self.cfg)
