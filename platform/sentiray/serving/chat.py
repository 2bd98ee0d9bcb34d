"""The OpenAI-compatible routes, offered when the family's predictor writes text (``supports_chat``).

- ``GET /v1/models``: the served ids (``served_model_name``, or every multiplexed id);
- ``POST /v1/chat/completions``: the last user message (its text parts joined, at most one
  image) is the prompt: the models are trained on single prompts. ``stream: true`` answers
  with server-sent events; ``stream_options.include_usage`` adds the token counts.

Generation runs in the replica's generation lane (``max_concurrent_generations`` at once),
beside label scoring, so a 512-token stream never holds up ``/v1/sentiment``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from sentiray.serving.endpoints import (
    ERRORS,
    json_response,
    requested_model,
    validate_body,
)
from sentiray.serving.schemas import (
    ApiError,
    ChatCompletion,
    ChatRequest,
    ImagePart,
    ModelCard,
    ModelInfo,
    ModelList,
    TextPart,
    check_image,
    check_max_tokens,
    check_text,
)

logger = logging.getLogger("ray.serve")


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def fingerprint(info: dict[str, Any]) -> str:
    return f"{info['name']}/{info['version']}" if info.get("version") else info["name"]


def user_input(req: ChatRequest, limits: Any, takes_images: bool, kind: str) -> tuple[str, bytes | None]:
    """The text and the image bytes of the last user message."""
    if len(req.messages) > limits.max_messages:
        raise ApiError(
            422, f"messages: {len(req.messages)} messages, the limit is {limits.max_messages}", "too_many_messages"
        )
    users = [i for i, m in enumerate(req.messages) if m.role == "user"]
    if not users:
        raise ApiError(400, "messages: no message with role 'user'", "no_user_message")
    at = users[-1]
    content = req.messages[at].content
    where = f"messages[{at}].content"
    if content is None:
        texts, urls = [], []
    elif isinstance(content, str):
        texts, urls = [content], []
    else:
        texts = [p.text for p in content if isinstance(p, TextPart)]
        urls = [p.image_url.url for p in content if isinstance(p, ImagePart)]
    text = "\n".join(texts)
    check_text(where, text, limits.max_text_chars)
    if len(urls) > 1:
        raise ApiError(400, f"{where}: {len(urls)} images, this model takes one per request", "too_many_images")
    image = None
    if urls:
        if not takes_images:
            raise ApiError(400, f"{where}: this model ({kind}) reads text only", "images_not_supported")
        image = check_image(f"{where}.image_url", urls[0], limits)
    if not text.strip() and image is None:
        raise ApiError(400, f"{where}: no text and no image", "empty_message")
    return text, image


def add_chat_routes(app: FastAPI, server: Any) -> None:
    cfg, limits = server.cfg, server.cfg.limits

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS, tags=["openai"])
    async def models() -> ModelList:
        cards = [
            ModelCard(
                id=model_id,
                created=server.started,
                source=ModelInfo(**info) if (info := server.model_info(model_id)) else None,
            )
            for model_id in cfg.sources
        ]
        return ModelList(data=cards)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={200: {"model": ChatCompletion}, **ERRORS},
        tags=["openai"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
            }
        },
    )
    async def chat_completions(request: Request):
        req = validate_body(ChatRequest, await request.body())
        loaded = await server.model_for(requested_model(request, req))
        if req.n != 1:
            raise ApiError(400, f"n: {req.n} choices asked, only n=1 is supported", "unsupported")
        context = loaded.context
        text, image = user_input(req, limits, context.takes_images, context.manifest.get("kind", "vlm"))
        max_new = req.max_completion_tokens or req.max_tokens or cfg.chat_max_new_tokens
        check_max_tokens("max_completion_tokens" if req.max_completion_tokens else "max_tokens", max_new, limits)
        options = {"max_new_tokens": max_new, "temperature": req.temperature or 0.0}
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": fingerprint(loaded.info),
        }
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = server.stream(loaded, text, image, options)
            return StreamingResponse(
                _stream_body(events, completion, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        answer = await server.predict(loaded, [{"prompt": text, "image": image}], options, "generate", kind="generate")
        out = answer.outputs[0]
        finish = "length" if out.new_tokens >= max_new else "stop"
        return json_response(
            ChatCompletion(
                **completion,
                choices=[{"index": 0, "message": {"role": "assistant", "content": out.text}, "finish_reason": finish}],
                usage={
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.new_tokens,
                    "total_tokens": out.prompt_tokens + out.new_tokens,
                },
            )
        )

    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    app.state.extra_schemas.update({**schema.pop("$defs", {}), "ChatRequest": schema})


async def _stream_body(events: Any, completion: dict[str, Any], include_usage: bool):
    """Server-sent chunks of one streamed completion; a failure after the 200 is reported in
    the stream, as OpenAI does."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse(
            {
                **completion,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    try:
        yield chunk({"role": "assistant", "content": ""})
        end = None
        async for event in events:
            if event["event"] == "delta":
                yield chunk({"content": event["text"]})
            else:
                end = event
        yield chunk({}, end["finish_reason"])
        if include_usage:
            usage = {
                "prompt_tokens": end["prompt_tokens"],
                "completion_tokens": end["completion_tokens"],
                "total_tokens": end["prompt_tokens"] + end["completion_tokens"],
            }
            yield _sse(
                {
                    "id": completion["id"],
                    "object": "chat.completion.chunk",
                    "created": completion["created"],
                    "model": completion["model"],
                    "choices": [],
                    "usage": usage,
                }
            )
    except Exception as exc:
        logger.exception("sentiray: stream failed")
        yield _sse(
            {
                "error": {
                    "message": f"stream failed ({type(exc).__name__})",
                    "type": "server_error",
                    "code": "internal_error",
                }
            }
        )
    finally:
        await events.aclose()  # the client left or we are done: stop generating
    yield "data: [DONE]\n\n"
