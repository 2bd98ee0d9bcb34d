"""The HTTP front door of the model deployment: a FastAPI app built in each replica.

Routes (OpenAPI schema at ``/openapi.json``):

- the family's own (``Family.endpoints``, e.g. MulCoT's ``POST /v1/sentiment``);
- ``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, streaming with
  server-sent events, when the family's predictor writes text (``supports_chat``);
- ``GET /healthz`` (the process answers) and ``GET /readyz`` (a model is loaded).

HTTP and the model share one deployment (see :mod:`sentiray.serving.server` for why):
everything cheap (auth, body size, admission, parsing, limits) happens here before a
request costs model time. Every error has one JSON shape, ``{"error": {"message", "type",
"code"}}``, the one the openai client reads; overload is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sentiray.config import ServeAppConfig
from sentiray.serving.schemas import ApiError, ErrorBody, format_validation_errors

logger = logging.getLogger("ray.serve")

# Probes answer without the API key: they carry no data and a prober holds no secret.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})

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


def overloaded(held: int, retry_after_s: float) -> JSONResponse:
    retry = max(1, math.ceil(retry_after_s))
    return error_response(
        503,
        f"overloaded, retry in {retry} s ({held} requests in this replica, its limit)",
        "overloaded",
        {"Retry-After": str(retry)},
    )


# --------------------------------------------------------------------------- middleware


def _route_path(scope: dict[str, Any]) -> str:
    """The path inside the app, without the application's route prefix."""
    path, root = scope.get("path", "/"), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


class Guard:
    """ASGI middleware: the API key on every route but the probes, admission (503 beyond the
    replica's capacity), the body size before parsing."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, server: Any):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.server = server

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        given = (
            auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode("latin-1")
        )
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

    def _too_large(self, size: int | str) -> JSONResponse:
        return error_response(
            413, f"request body: {size} bytes, the limit is {self.max_body_bytes}", "payload_too_large"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        probe = _route_path(scope) in PROBE_PATHS
        if self.api_key is not None and not probe and not self._authorized(headers):
            response = error_response(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
            return await response(scope, receive, send)
        if probe:
            return await self.app(scope, receive, send)
        server = self.server
        if server.capacity is not None and server.inflight >= server.capacity:
            return await overloaded(server.inflight, server.cfg.retry_after_s)(scope, receive, send)
        server.inflight += 1  # until the answer is sent (a stream: to its end)
        try:
            await self._guarded(scope, receive, send, headers)
        finally:
            server.inflight -= 1

    async def _guarded(self, scope, receive, send, headers):
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


# --------------------------------------------------------------------------- the app


def api_key_from_env(cfg: ServeAppConfig) -> str | None:
    """The key named by ``api_key_env``; a named but unset variable stops the replica (fail closed)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise RuntimeError(
            f"api_key_env is {cfg.api_key_env!r} but that variable is not set (or empty) in the replica's "
            "environment: set it on the cluster (or in the deployment's runtime_env), or remove api_key_env"
        )
    return key


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(
                400, f"request body is not valid JSON ({format_validation_errors(errs)})", "invalid_json"
            )
        return error_response(422, format_validation_errors(errs), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def _bug(_, exc: Exception):
        logger.exception("sentiray: unexpected error")
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", "internal_error")


def _add_probes(app: FastAPI, server: Any) -> None:
    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, str]:
        if not server.ready():
            raise ApiError(503, "model not loaded yet", "not_ready", {"Retry-After": "5"})
        return {"status": "ready"}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            # The bodies the handlers validate themselves (fast, in Rust) are not seen by FastAPI.
            schema.setdefault("components", {}).setdefault("schemas", {}).update(app.state.extra_schemas)
            app.openapi_schema = schema
        return app.openapi_schema


def create_app(server: Any) -> FastAPI:
    """The FastAPI app of one replica of :class:`~sentiray.serving.server.SentimentModel`."""
    from sentiray import __version__
    from sentiray.serving.chat import add_chat_routes
    from sentiray.serving.endpoints import add_family_routes, extra_schemas

    cfg = server.cfg
    app = FastAPI(
        title="sentiray",
        version=__version__,
        description=f"Multimodal sentiment: the {server.family_name} family's endpoints"
        + ("; OpenAI-compatible chat completions." if server.supports_chat else "."),
        openapi_url=None,  # served below, behind the API key like every route but the probes
        docs_url=None,
        redoc_url=None,
    )
    app.state.extra_schemas = extra_schemas(server)
    app.add_middleware(Guard, api_key=api_key_from_env(cfg), max_body_bytes=cfg.limits.max_body_bytes, server=server)
    _add_error_handlers(app)
    _add_probes(app, server)
    add_family_routes(app, server, tag=server.family_name)
    if server.supports_chat:
        add_chat_routes(app, server)
    return app
