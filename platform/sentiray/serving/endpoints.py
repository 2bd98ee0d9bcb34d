"""A family's routes (``Family.endpoints``) on the server: validate, parse, predict in batches, respond.

For each :class:`~sentiray.families.base.Endpoint` the server adds ``POST endpoint.path``:

1. the body is validated against ``endpoint.request`` (422 naming the field; 400 when it is
   not JSON), in a worker thread when it is large (an image), else inline;
2. the model is the one the request names (the ``serve_multiplexed_model_id`` header, or
   the body's ``model`` field), or the app's one model;
3. ``endpoint.parse(request, context)`` -> ``(rows, options)`` or an :class:`ApiError`;
4. the rows join a batch of the scoring lane, or of the generation lane when
   ``endpoint.generates(options)``; a row that fails alone gets a 4xx, not its batch;
5. ``endpoint.respond(request, predictions, model_info)`` -> the body (a pydantic model or a
   dict); ``model_info`` holds ``id``, ``name``, ``version`` and ``timings``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from sentiray.config import ServeLimits
from sentiray.serving.schemas import ApiError, ErrorBody, format_validation_errors

# Bodies above this are validated and parsed in a worker thread: base64 images take
# milliseconds to decode and check, which would stall every other request on the loop;
# below it the thread hop costs more than the work.
OFFLOAD_BYTES = 64 * 1024
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 503)}


@dataclass(frozen=True)
class ParseContext:
    """What ``Endpoint.parse`` may read: built once per loaded model, not per request."""

    limits: ServeLimits
    manifest: dict[str, Any]  # the answering model's: family, task, labels, kind, ...
    settings: Any  # the app's ``endpoint:`` args, validated by ``Endpoint.settings`` (None without)
    takes_images: bool

    @property
    def task(self) -> str:
        return self.manifest.get("task", "msc")

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or ())


def takes_images(manifest: dict[str, Any]) -> bool:
    """Whether a model reads images: its manifest says so, or its kind is a vision-language model."""
    return bool(manifest.get("takes_images", manifest.get("kind", "vlm") == "vlm"))


def validate_body(model: type[BaseModel], body: bytes) -> Any:
    """A request body as ``model``: 400 when it is not JSON, 422 naming each bad field."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            raise ApiError(
                400, f"request body is not valid JSON ({format_validation_errors(errors)})", "invalid_json"
            ) from None
        raise ApiError(422, format_validation_errors(errors), "invalid_request") from None


def json_response(body: Any) -> Response:
    if isinstance(body, BaseModel):  # pydantic's own encoder: faster than FastAPI's re-validation
        return Response(body.model_dump_json(), media_type="application/json")
    return JSONResponse(body)


def requested_model(request: Request, body: Any) -> str | None:
    """The model id a request names: the multiplexing header (Serve routed it by that) or a
    ``model`` field of its body; both, differing, is an error."""
    from ray import serve

    header = serve.get_multiplexed_model_id() or None
    field = getattr(body, "model", None) or None
    if header and field and header != field:
        raise ApiError(
            400,
            f"model: the body names {field!r}, the serve_multiplexed_model_id header {header!r}",
            "conflicting_model",
        )
    return header or field


def add_family_routes(app: FastAPI, server: Any, tag: str) -> None:
    """Mount every endpoint of the server's family."""
    for endpoint in server.endpoints:
        app.add_api_route(
            endpoint.path,
            _handler(server, endpoint),
            methods=["POST"],
            tags=[tag],
            summary=endpoint.summary or None,
            response_model=None,
            responses={200: {"model": endpoint.response}, **ERRORS} if endpoint.response else ERRORS,
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{endpoint.request.__name__}"}}
                    },
                }
            },
        )


def _handler(server: Any, endpoint: Any):
    async def handle(request: Request) -> Response:
        server.arriving += 1  # the batcher may wait for this one while it is parsed
        submitted = False
        try:
            body = await request.body()
            start = time.perf_counter()
            offload = len(body) > OFFLOAD_BYTES
            req = (
                await asyncio.to_thread(validate_body, endpoint.request, body)
                if offload
                else validate_body(endpoint.request, body)
            )
            loaded = await server.model_for(requested_model(request, req))
            parse_args = (req, loaded.context)
            rows, options = (
                await asyncio.to_thread(endpoint.parse, *parse_args) if offload else endpoint.parse(*parse_args)
            )
            lane = "generate" if endpoint.generates and endpoint.generates(options) else "score"
            server.arriving -= 1
            submitted = True
            answer = await server.predict(loaded, rows, options, lane)
            timings = {
                "total_ms": (time.perf_counter() - start) * 1000,
                "model_ms": answer.model_ms,
                "queue_ms": answer.queue_ms,
                "batch_size": answer.batch_size,
                "batch_failures": answer.batch_failures,
            }
            return json_response(endpoint.respond(req, answer.outputs, {**loaded.info, "timings": timings}))
        finally:
            if not submitted:
                server.arriving -= 1

    handle.__name__ = "endpoint_" + endpoint.path.strip("/").replace("/", "_").replace("-", "_")
    return handle


def extra_schemas(server: Any) -> dict[str, Any]:
    """OpenAPI components of the endpoints' request bodies (validated by hand, so FastAPI does
    not see them)."""
    out: dict[str, Any] = {}
    for endpoint in server.endpoints:
        schema = endpoint.request.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[endpoint.request.__name__] = schema
    return out


def endpoint_settings(endpoints: tuple, cfg: Any, source: str = "serve application args") -> Any:
    """The app's ``endpoint:`` args validated by the family's settings model (None: it has none).

    Validation sees ``context={"limits": cfg.limits}``, so a setting can be checked against
    the limits (a default chain length above ``limits.max_new_tokens``)."""
    from sentiray.config import ConfigError

    classes = {e.settings for e in endpoints if e.settings is not None}
    if not classes:
        if cfg.endpoint:
            raise ConfigError(
                f"invalid config {source}:\n  endpoint: this family's endpoints take no settings "
                f"(got {', '.join(sorted(cfg.endpoint))})"
            )
        return None
    if len(classes) > 1:
        raise ConfigError(
            f"the endpoints of one family must share one settings model, found {sorted(c.__name__ for c in classes)}"
        )
    (model,) = classes
    try:
        return model.model_validate(cfg.endpoint, context={"limits": cfg.limits})
    except ValidationError as exc:
        lines = [f"invalid config {source}:"]
        for err in exc.errors():
            loc = ".".join(["endpoint", *(str(p) for p in err["loc"])])
            msg = "unknown key (not a field of this section)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg.removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
