"""MulCoT's HTTP endpoint: ``POST /v1/sentiment`` (label, class probabilities, optional chain).

A request is one post (text, optional image and aspect); the answer is the label by the
likelihood of each l-stream answer, the softmax over the labels, and with ``chain: true``
a generated reasoning chain and the label parsed from it (which may differ). Audio and
vision features are accepted and checked but not read (the MSE-Adapter family reads them):
the answer says so in ``warnings``. The server (``sentiray.serving``) adds auth, limits,
batching and the error shape; see serve/README.md, "Endpoints of a family".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from sentiray.families.base import Endpoint
from sentiray.serving.schemas import (
    ApiError,
    FeatureSequence,
    ModelInfo,
    StrictBody,
    Timings,
    check_features,
    check_image,
    check_max_tokens,
    check_text,
)


class SentimentSettings(BaseModel):
    """The app's ``endpoint:`` args for MulCoT."""

    model_config = {"extra": "forbid"}
    chain_max_new_tokens: int = Field(
        256, gt=0, description="Default length of a reasoning chain (requests may ask less or more)."
    )

    @field_validator("chain_max_new_tokens")
    @classmethod
    def _within_limits(cls, value: int, info: ValidationInfo) -> int:
        limits = (info.context or {}).get("limits")
        if limits is not None and value > limits.max_new_tokens:
            raise ValueError(f"chain_max_new_tokens ({value}) > limits.max_new_tokens ({limits.max_new_tokens})")
        return value


class SentimentRequest(StrictBody):
    text: str = Field("", description="The post (may be empty when an image is given).")
    image: str | None = Field(None, description="The image: base64, or a data URL (data:image/png;base64,...).")
    aspect: str | None = Field(
        None, description="Target aspect (aspect-level sentiment); the prompt then asks about it."
    )
    audio: FeatureSequence | None = Field(
        None, description="Audio features, T x D numbers (for feature models; see warnings)."
    )
    vision: FeatureSequence | None = Field(
        None, description="Video features, T x D numbers (for feature models; see warnings)."
    )
    chain: bool = Field(False, description="Also generate the reasoning chain (costs generation time).")
    max_tokens: int | None = Field(None, gt=0, description="Length limit of the chain in tokens.")
    model: str | None = Field(None, description="Which model answers, on an endpoint serving several (multiplexed).")


class SentimentResponse(BaseModel):
    label: str
    probabilities: dict[str, float]
    chain: str | None = None
    chain_label: str | None = Field(None, description="The label parsed from the chain (may differ from label).")
    model: ModelInfo
    timings: Timings
    warnings: list[str] = Field(default_factory=list)


def parse(req: SentimentRequest, context: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One canonical row (image as bytes) and the predict options."""
    limits = context.limits
    check_text("text", req.text, limits.max_text_chars)
    aspect = req.aspect or None
    if aspect is not None:
        check_text("aspect", aspect, limits.max_aspect_chars)
    if not req.text.strip() and req.image is None:
        raise ApiError(422, "text: empty, and no image: send text, an image or both", "empty_request")
    image = None
    if req.image is not None:
        if not context.takes_images:
            raise ApiError(
                400,
                f"image: this model ({context.manifest.get('kind', 'text only')}) reads text only",
                "images_not_supported",
            )
        image = check_image("image", req.image, limits)
    for name in ("audio", "vision"):
        check_features(name, getattr(req, name), limits)
    if req.max_tokens is not None:
        check_max_tokens("max_tokens", req.max_tokens, limits)
    options: dict[str, Any] = {"chain": req.chain}
    if req.chain:
        options["max_new_tokens"] = req.max_tokens or context.settings.chain_max_new_tokens
    return [{"text": req.text, "aspect": aspect, "image": image}], options


def respond(req: SentimentRequest, predictions: list[dict[str, Any]], model_info: dict[str, Any]) -> SentimentResponse:
    pred = predictions[0]
    warnings = [
        f"{name} features ({len(seq)}x{len(seq[0])}) accepted but not used: this model reads text and images"
        for name in ("audio", "vision")
        if (seq := getattr(req, name))
    ]
    info = {k: model_info[k] for k in ("id", "name", "version")}
    return SentimentResponse(
        label=pred["label"],
        probabilities=pred["probs"],
        chain=pred.get("chain"),
        chain_label=pred.get("chain_label"),
        model=ModelInfo(**info),
        timings=Timings(**model_info["timings"]),
        warnings=warnings,
    )


ENDPOINTS = (
    Endpoint(
        path="/v1/sentiment",
        request=SentimentRequest,
        parse=parse,
        respond=respond,
        response=SentimentResponse,
        summary="Label, class probabilities and (chain: true) a reasoning chain for one post",
        generates=lambda options: bool(options.get("chain")),
        settings=SentimentSettings,
    ),
)
