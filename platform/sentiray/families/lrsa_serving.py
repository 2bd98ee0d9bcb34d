"""LRSA's HTTP endpoints, and its rationales at request time.

- ``POST /v1/aspects`` ``{text, image?, text_explanation?, image_description?}`` (a model
  trained on mabsa data): the aspects found, each ``{term, start, end, polarity, probability}``
  (word indices, ``end`` exclusive).
- ``POST /v1/sentiment`` ``{text, aspect, image?, ...}``: the aspect's polarity (a masc model;
  a mabsa model answers from its tags over the aspect's words).

Rationales, in this order: the ones the request gives; else, when the app's ``endpoint:``
names a teacher (``teacher_url``: any OpenAI-compatible chat-completions endpoint), the ones
it writes within ``teacher_timeout_s`` with at most ``teacher_max_in_flight`` calls in flight
per replica (the same prompt templates as the rationales stage); else none: the model answers
without them (it was trained with rationale dropout for this). Every answer says which
(``rationales``: per rationale its ``source``: request / teacher / none, and why not).
A request that needs the teacher runs in the replica's generation lane, so a slow teacher never
holds the scoring of requests that bring their rationales.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from concurrent import futures
from typing import Any

from pydantic import BaseModel, Field

from sentiray.families.base import Endpoint
from sentiray.serving.schemas import ApiError, ModelInfo, StrictBody, Timings, check_image, check_text

COLUMNS = {"text": "text_explanation", "image": "image_description"}
PROMPTS = {"text": "explain_text", "image": "describe_image"}


class LrsaSettings(BaseModel):
    """The app's ``endpoint:`` args for LRSA (all optional: without a teacher, rationales come
    from the request or not at all)."""

    model_config = {"extra": "forbid"}
    teacher_url: str | None = Field(
        None, description="OpenAI-compatible base URL (…/v1) that writes missing rationales."
    )
    teacher_model: str = Field("teacher", description="The model name sent to the teacher endpoint.")
    teacher_api_key_env: str | None = Field(None, description="Environment variable holding the teacher's API key.")
    teacher_timeout_s: float = Field(10.0, gt=0, description="The most a request waits for its rationales.")
    teacher_max_in_flight: int = Field(4, gt=0, description="Teacher calls in flight at once, per replica.")
    teacher_max_tokens: int = Field(128, gt=0, description="Length limit of a rationale.")
    prompts_dir: str | None = Field(
        None, description="Prompt templates overriding explain_text.txt / describe_image.txt."
    )


class RationaleFields(StrictBody):
    text_explanation: str | None = Field(
        None, description="The teacher's explanation of the text (L_t), if you have it."
    )
    image_description: str | None = Field(
        None, description="The teacher's description of the image (L_i), if you have it."
    )
    teacher: bool = Field(True, description="Ask the configured teacher for the rationales the request lacks.")
    model: str | None = Field(None, description="Which model answers, on an endpoint serving several (multiplexed).")


class AspectsRequest(RationaleFields):
    text: str = Field(..., description="The post; aspects are found among its whitespace-separated words.")
    image: str | None = Field(None, description="The image: base64, or a data URL (data:image/png;base64,...).")


class SentimentRequest(RationaleFields):
    text: str = Field(..., description="The post.")
    aspect: str = Field(..., description="The aspect (words of the text) whose polarity is asked.")
    image: str | None = Field(None, description="The image: base64, or a data URL.")


class Aspect(BaseModel):
    term: str
    start: int = Field(description="First word (0-based).")
    end: int = Field(description="One past the last word.")
    polarity: str
    probability: float = Field(description="Mean probability of the chosen tags over the aspect's words.")


class Rationale(BaseModel):
    source: str = Field(description="request | teacher | none")
    text: str | None = None
    reason: str | None = Field(None, description="Why there is none (no teacher, timeout, error, no image).")


class AspectsResponse(BaseModel):
    aspects: list[Aspect]
    words: list[str]
    rationales: dict[str, Rationale]
    without_rationales: bool = Field(description="True: the model answered with no rationale at all.")
    model: ModelInfo
    timings: Timings


class SentimentResponse(BaseModel):
    label: str
    probabilities: dict[str, float]
    rationales: dict[str, Rationale]
    without_rationales: bool
    model: ModelInfo
    timings: Timings


# --------------------------------------------------------------------------- parsing


def _common(req: Any, context: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    limits = context.limits
    check_text("text", req.text, limits.max_text_chars)
    if not req.text.split():
        raise ApiError(422, "text: empty: send the post's text (the aspects are words of it)", "empty_text")
    row: dict[str, Any] = {"text": req.text, "image": None}
    if req.image is not None:
        if not context.takes_images:
            raise ApiError(400, "image: this model reads no images (lrsa.image: none)", "images_not_supported")
        row["image"] = check_image("image", req.image, limits)
    for column in COLUMNS.values():
        value = getattr(req, column)
        if value is not None:
            check_text(column, value, limits.max_text_chars)
            row[column] = value if value.strip() else None
    options: dict[str, Any] = {}
    reads = (context.manifest.get("lrsa") or {}).get("rationales", "both")
    wanted = {"both": ("text", "image"), "text": ("text",), "image": ("image",), "none": ()}[reads]
    missing = [k for k in wanted if not row.get(COLUMNS[k]) and (k != "image" or row["image"] is not None)]
    settings = context.settings
    if missing and req.teacher and settings is not None and settings.teacher_url:
        options["teacher"] = settings.model_dump()
    return row, options


def parse_aspects(req: AspectsRequest, context: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if context.task != "mabsa":
        raise ApiError(
            400,
            f"model: it was trained on {context.task} data (polarity of a given aspect): ask "
            "/v1/sentiment with an aspect; /v1/aspects needs a model trained on mabsa data",
            "wrong_task",
        )
    row, options = _common(req, context)
    return [row], options


def parse_sentiment(req: SentimentRequest, context: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from sentiray.models.lrsa import find_words

    row, options = _common(req, context)
    check_text("aspect", req.aspect, context.limits.max_aspect_chars)
    if not req.aspect.split():
        raise ApiError(422, "aspect: empty: name the aspect whose polarity you ask", "empty_aspect")
    if find_words(req.text.split(), req.aspect.split()) is None:
        raise ApiError(422, f"aspect: {req.aspect!r} does not occur in the text (as whole words)", "aspect_not_in_text")
    row["aspect"] = req.aspect
    return [row], options


# --------------------------------------------------------------------------- answers


def _rationales(pred: dict[str, Any]) -> dict[str, Rationale]:
    return {COLUMNS[k]: Rationale(**v) for k, v in pred["rationale_sources"].items()}


def _info(model_info: dict[str, Any]) -> tuple[ModelInfo, Timings]:
    return ModelInfo(**{k: model_info[k] for k in ("id", "name", "version")}), Timings(**model_info["timings"])


def respond_aspects(
    req: AspectsRequest, predictions: list[dict[str, Any]], model_info: dict[str, Any]
) -> AspectsResponse:
    pred = predictions[0]
    model, timings = _info(model_info)
    return AspectsResponse(
        aspects=[Aspect(**s) for s in pred["spans"]],
        words=req.text.split(),
        rationales=_rationales(pred),
        without_rationales=not pred["rationales"],
        model=model,
        timings=timings,
    )


def respond_sentiment(
    req: SentimentRequest, predictions: list[dict[str, Any]], model_info: dict[str, Any]
) -> SentimentResponse:
    pred = predictions[0]
    model, timings = _info(model_info)
    return SentimentResponse(
        label=pred["label"],
        probabilities=pred["probs"],
        rationales=_rationales(pred),
        without_rationales=not pred["rationales"],
        model=model,
        timings=timings,
    )


ENDPOINTS = (
    Endpoint(
        path="/v1/aspects",
        request=AspectsRequest,
        parse=parse_aspects,
        respond=respond_aspects,
        response=AspectsResponse,
        summary="The aspects of a post (JMASA): term, word span, polarity, probability",
        generates=lambda options: "teacher" in options,
        settings=LrsaSettings,
    ),
    Endpoint(
        path="/v1/sentiment",
        request=SentimentRequest,
        parse=parse_sentiment,
        respond=respond_sentiment,
        response=SentimentResponse,
        summary="The polarity of one aspect of a post (MASC)",
        generates=lambda options: "teacher" in options,
        settings=LrsaSettings,
    ),
)


# --------------------------------------------------------------------------- the teacher at request time

_POOLS: dict[tuple[str, int], futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(url: str, in_flight: int) -> futures.ThreadPoolExecutor:
    """One pool per teacher and replica: its threads are the bound on calls in flight."""
    with _POOLS_LOCK:
        key = (url, in_flight)
        if key not in _POOLS:
            _POOLS[key] = futures.ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="lrsa-teacher")
        return _POOLS[key]


def _data_url(image: bytes) -> str:
    mime = "image/jpeg" if image[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def _ask(settings: dict[str, Any], prompt: str, image: bytes | None, timeout: float) -> str:
    import requests

    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _data_url(image)}}] if image else []
    content.append({"type": "text", "text": prompt})
    headers = {}
    key_env = settings.get("teacher_api_key_env")
    if key_env and os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    body = {
        "model": settings["teacher_model"],
        "messages": [{"role": "user", "content": content}],
        "max_tokens": settings["teacher_max_tokens"],
        "temperature": 0.0,
    }
    resp = requests.post(
        settings["teacher_url"].rstrip("/") + "/chat/completions",
        json=body,
        headers=headers,
        timeout=max(0.05, timeout),
    )
    if resp.status_code != 200:
        raise RuntimeError(f"HTTP {resp.status_code}")
    text = resp.json()["choices"][0]["message"]["content"]
    if not (text or "").strip():
        raise RuntimeError("an empty answer")
    return text.strip()


def write_rationales(
    rows: list[dict[str, Any]], kinds: tuple[str, ...], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Fill the rationales ``rows`` lack by asking the teacher, all calls at once (bounded per
    replica), waiting at most ``teacher_timeout_s`` in all. Returns per row ``{kind: reason}``
    for the ones that stay missing (a call that is late is abandoned, its answer discarded)."""
    from sentiray import prompts

    deadline = time.monotonic() + settings["teacher_timeout_s"]
    pool = _pool(settings["teacher_url"], settings["teacher_max_in_flight"])
    calls: dict[futures.Future, tuple[int, str]] = {}
    missing: list[dict[str, Any]] = [{} for _ in rows]
    for i, row in enumerate(rows):
        for kind in kinds:
            if row.get(COLUMNS[kind]):
                continue
            if kind == "image" and not row.get("image"):
                missing[i][kind] = "the request has no image"
                continue
            prompt = prompts.render(PROMPTS[kind], {**row, "task": "mabsa"}, settings.get("prompts_dir"))
            image = row.get("image") if kind == "image" else None
            calls[pool.submit(_ask, settings, prompt, image, settings["teacher_timeout_s"])] = (i, kind)
    done, late = futures.wait(calls, timeout=max(0.0, deadline - time.monotonic()))
    for future in late:
        future.cancel()
        i, kind = calls[future]
        missing[i][kind] = f"the teacher did not answer within {settings['teacher_timeout_s']:g} s"
    for future in done:
        i, kind = calls[future]
        try:
            rows[i][COLUMNS[kind]] = future.result()
        except Exception as exc:  # noqa: BLE001 - a teacher down, refusing or erring: answer without it
            missing[i][kind] = f"the teacher failed: {type(exc).__name__}: {str(exc)[:160]}"
    return missing
