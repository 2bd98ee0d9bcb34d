"""What every endpoint shares: the error type, the model and timing parts of an answer, the
OpenAI-compatible bodies, and the checks of what a request may carry.

Pydantic checks the structure (field names, types, finite numbers): the server answers a
violation with 422. The limits that depend on the deployment's config (text length,
image bytes, format, sides, pixels and aspect ratio, feature shapes, max_tokens) are
checked by the functions below, which raise :class:`ApiError` with a 4xx status and a
message naming the field, what it holds and what the limit is. A family's endpoint
(``Endpoint.parse``) calls them for its own fields.

The chat bodies follow OpenAI's chat-completions API closely enough for the ``openai``
client; fields it may send that we do not use (``top_p``, ``stop``, ...) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sentiray.config import ServeLimits

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureSequence = list[list[FiniteFloat]]


class ApiError(Exception):
    """A request we refuse: an HTTP status, a message for the caller, optional headers."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class StrictBody(BaseModel):
    # Our own API: a misspelt field is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class LenientBody(BaseModel):
    # OpenAI-compatible bodies: clients send fields we do not use.
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- parts of every answer


class ModelInfo(BaseModel):
    """The model behind an answer: never where it is stored."""

    id: str = Field(description="The id it is served under (served_model_name, or its multiplexed id).")
    name: str = Field(description="Registered name, run artifact or folder name.")
    version: str | None = Field(None, description="Registry version (models:/ and runs:/ sources), else null.")


class Timings(BaseModel):
    total_ms: float = Field(description="Time in the server, from the parsed request to the answer.")
    model_ms: float = Field(description="Compute time of the batch this request ran in.")
    queue_ms: float = Field(description="Time this request waited for its batch to start.")
    batch_size: int = Field(description="Rows in the batch this request ran in.")
    batch_failures: int = Field(
        0, description="Requests of that batch that failed alone on their input (model_ms includes isolating them)."
    )


# --------------------------------------------------------------------------- OpenAI chat completions


class ImageURL(LenientBody):
    url: str
    detail: str | None = None


class TextPart(LenientBody):
    type: Literal["text"]
    text: str


class ImagePart(LenientBody):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(LenientBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(LenientBody):
    include_usage: bool = False


class ChatRequest(LenientBody):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2, description="Default 0 (greedy), unlike OpenAI's 1.")
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = Field(None, description="The model behind the served name: name/version.")
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sentiray"
    source: ModelInfo | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorBody(BaseModel):
    """Every error, OpenAI style, so that the openai client shows the message."""

    error: ErrorDetail


# --------------------------------------------------------------------------- limit checks


def check_text(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise ApiError(422, f"{field}: {len(text)} characters, the limit is {limit}", "text_too_long")


def check_max_tokens(field: str, value: int, limits: ServeLimits) -> None:
    if value > limits.max_new_tokens:
        raise ApiError(
            422, f"{field}: {value} tokens asked, the limit is {limits.max_new_tokens}", "max_tokens_too_large"
        )


def check_features(field: str, seq: list[list[float]] | None, limits: ServeLimits) -> tuple[int, int] | None:
    """A T x D sequence within the limits, every row D long; returns (T, D)."""
    if seq is None:
        return None
    if not seq:
        raise ApiError(422, f"{field}: an empty sequence; send T x D numbers with T >= 1", "bad_features")
    frames, dim = len(seq), len(seq[0])
    if dim == 0:
        raise ApiError(422, f"{field}: frame 0 is empty; send T x D numbers with D >= 1", "bad_features")
    for i, row in enumerate(seq):
        if len(row) != dim:
            raise ApiError(
                422,
                f"{field}: frame {i} has {len(row)} numbers, frame 0 has {dim}; all frames need the same D",
                "bad_features",
            )
    if frames > limits.max_feature_frames:
        raise ApiError(422, f"{field}: {frames} frames, the limit is {limits.max_feature_frames}", "bad_features")
    if dim > limits.max_feature_dim:
        raise ApiError(422, f"{field}: {dim} numbers per frame, the limit is {limits.max_feature_dim}", "bad_features")
    return frames, dim


def image_bytes(field: str, value: str, limits: ServeLimits) -> bytes:
    """The bytes of an image sent as base64 or as a data URL; never fetches a URL."""
    value = value.strip()
    if value.startswith(("http://", "https://")):
        raise ApiError(
            400,
            f"{field}: image URLs are not fetched; send the image as base64 or a data URL",
            "image_url_not_supported",
        )
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, f"{field}: a data URL must be base64 encoded (data:image/png;base64,...)", "bad_image")
        value = payload
    value = "".join(value.split())  # base64 wrapped over lines
    # Refuse an oversized image before decoding it (4 characters carry 3 bytes).
    if len(value) // 4 * 3 > limits.max_image_bytes + 3:
        raise ApiError(
            413, f"{field}: about {len(value) // 4 * 3} bytes, the limit is {limits.max_image_bytes}", "image_too_large"
        )
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: not valid base64", "bad_image") from None
    if not data:
        raise ApiError(400, f"{field}: empty image", "bad_image")
    if len(data) > limits.max_image_bytes:
        raise ApiError(413, f"{field}: {len(data)} bytes, the limit is {limits.max_image_bytes}", "image_too_large")
    return data


def check_image(field: str, value: str, limits: ServeLimits) -> bytes:
    """The bytes of a valid image sent as base64 or a data URL, checked from its header alone.

    Format, sides, pixel count and aspect ratio are read without decoding a pixel (the model
    thread decodes, off the event loop); they match what processors need (Qwen2-VL's
    smart_resize refuses aspect ratios above 200)."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(field, value, limits)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (width, height) = probe.format, probe.size
    except Image.DecompressionBombError as exc:
        raise ApiError(422, f"{field}: {exc}", "image_too_large") from None
    except (UnidentifiedImageError, OSError):
        raise ApiError(400, f"{field}: not an image PIL can read", "bad_image") from None
    if fmt not in limits.image_formats:
        raise ApiError(
            415,
            f"{field}: format {fmt} is not accepted; send one of {', '.join(limits.image_formats)}",
            "bad_image_format",
        )
    if max(width, height) > limits.max_image_side:
        raise ApiError(
            422, f"{field}: {width}x{height} pixels, the limit is {limits.max_image_side} per side", "image_too_large"
        )
    if min(width, height) < limits.min_image_side:
        raise ApiError(
            422,
            f"{field}: {width}x{height} pixels, each side needs at least {limits.min_image_side}",
            "image_too_small",
        )
    if width * height > limits.max_image_pixels:
        raise ApiError(
            422,
            f"{field}: {width * height} pixels ({width}x{height}), the limit is {limits.max_image_pixels}",
            "image_too_large",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_image_aspect_ratio:
        raise ApiError(
            422,
            f"{field}: {width}x{height} pixels, aspect ratio {ratio:.1f}, the limit is "
            f"{limits.max_image_aspect_ratio:g}",
            "bad_image_aspect_ratio",
        )
    return data


def format_validation_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one line: ``audio[0][1]: Input should be a valid number; ...``."""
    parts = []
    for err in errors:
        loc = [p for p in err.get("loc", ()) if p != "body"]
        where = ""
        for p in loc:
            where += f"[{p}]" if isinstance(p, int) else (f".{p}" if where else str(p))
        msg = err.get("msg", "invalid")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"
