"""MSE-Adapter's HTTP endpoint: ``POST /v1/sentiment`` (a score, or an emotion with probabilities).

A request is one utterance: its ``text`` and its ``audio`` / ``vision`` feature sequences (T x D
numbers each, D the widths the adapter was trained on). The answer depends on the adapter that
answers it: a regression adapter (MOSI/MOSEI/SIMS-V2, synthetic ``msa``) gives ``score`` (the
greedy answer parsed to a signed float; one that does not parse counts as 0, as in the paper's
code, and the answer says so), an ERC adapter (MELD/CHERMA, synthetic ``erc``) gives ``label`` and
the softmax over the class indices' likelihoods (``probabilities``). Every answer names the
adapter (``model``: id, name, version) and the frozen backbone it ran on (``backbone``: its name
and how many backbones the answering replica holds).

Several adapters are served by one application through Ray Serve model multiplexing (``models:
{id: source}`` in the app's args, serve/adapters.yaml): the request names its adapter in the
``serve_multiplexed_model_id`` header or in its ``model`` field. Adapters on the same backbone
share one frozen copy per replica (:func:`sentiray.families.mse_adapter.shared_backbone`), so N
tasks cost one backbone's memory plus N adapters of a few MB; ``backbone.loaded_in_replica``
shows it.

Checked before any model time, each a 4xx naming the field: no text; features missing when the
adapter reads them, empty, ragged, of another width than the adapter's (``feature_dims`` of the
served manifest: the widths in its adapter.json), NaN or infinite (also after the float32 cast), longer than
``limits.max_feature_frames``. The server (``sentiray.serving``) adds auth, limits, batching and
the error shape; see serve/README.md, "Serving an adapter".
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from sentiray.families.base import Endpoint
from sentiray.serving.schemas import (
    ApiError,
    FeatureSequence,
    ModelInfo,
    StrictBody,
    Timings,
    check_features,
    check_text,
)

MODALITIES = ("audio", "vision")  # as sentiray.families.mse_adapter.MODALITIES (not imported: it imports us)


class SentimentRequest(StrictBody):
    text: str = Field(..., description="The utterance's text (required: the adapter's pseudo tokens are guided by it).")
    audio: FeatureSequence | None = Field(
        None, description="Audio features, T x D numbers (D: the adapter's audio width, e.g. 74 for MOSEI's COVAREP)."
    )
    vision: FeatureSequence | None = Field(
        None, description="Video features, T x D numbers (D: the adapter's vision width, e.g. 35 for MOSEI's Facet)."
    )
    decode: Literal["likelihood", "generate"] | None = Field(
        None,
        description="ERC adapters: the label by the likelihood of each class index (default; gives the "
        "probabilities) or the greedy answer parsed (the paper's). Not for regression adapters.",
    )
    model: str | None = Field(None, description="Which adapter answers, on an endpoint serving several (multiplexed).")

    # What parse learnt from the answering adapter's manifest, for respond (not part of the body).
    _manifest: dict[str, Any] = PrivateAttr(default_factory=dict)
    _warnings: list[str] = PrivateAttr(default_factory=list)


class BackboneInfo(BaseModel):
    """The frozen LLM behind an answer, and what the answering replica holds."""

    name: str = Field(description="The backbone's model or folder name (never where it is stored).")
    dtype: str | None = Field(None, description="The dtype it computes in on the replica (bfloat16 on GPUs).")
    device: str | None = Field(None, description="Where it is on the replica (cpu, cuda).")
    loaded_in_replica: int = Field(
        description="Frozen backbones the answering replica holds: adapters on the same backbone share one copy, so "
        "any number of them on one backbone count 1."
    )
    replica: str | None = Field(None, description="The Serve replica that answered.")


class SentimentResponse(BaseModel):
    task: str = Field(description="msa: a sentiment score (regression); erc: an emotion label.")
    score: float | None = Field(None, description="Regression: the sentiment intensity (e.g. in [-3, 3] for MOSEI).")
    label: str | None = Field(None, description="ERC: the emotion.")
    probabilities: dict[str, float] | None = Field(None, description="ERC: softmax over the classes' likelihoods.")
    answer: str | None = Field(None, description="The adapter's generated answer, when it generated one.")
    unparseable: bool = Field(False, description="The generated answer did not parse: counted as 0 (score) or class 0.")
    model: ModelInfo
    backbone: BackboneInfo
    timings: Timings
    warnings: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- parsing


def feature_widths(manifest: dict[str, Any]) -> dict[str, int] | None:
    """The audio / vision widths an adapter reads, from its (served) manifest; None: unknown."""
    dims = manifest.get("feature_dims")
    if isinstance(dims, dict) and all(dims.get(m) for m in MODALITIES):
        return {m: int(dims[m]) for m in MODALITIES}
    if all(manifest.get(f"{m}_dim") for m in MODALITIES):
        return {m: int(manifest[f"{m}_dim"]) for m in MODALITIES}
    return None


def _features(name: str, seq: list[list[float]], width: int | None, limits: Any) -> Any:
    """One feature sequence as a T x D float32 array, every check a 422 naming ``name``."""
    import numpy as np

    frames, dim = check_features(name, seq, limits)  # empty, ragged, too many frames, too wide
    if width is not None and dim != width:
        raise ApiError(422, f"{name}: frames of {dim} numbers, this adapter reads {width} per frame", "bad_features")
    with np.errstate(over="ignore"):
        array = np.asarray(seq, dtype=np.float32)
    if not np.isfinite(array).all():  # finite as JSON numbers, but beyond float32 (|x| > 3.4e38)
        frame = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ApiError(422, f"{name}: frame {frame} holds a value beyond float32's range", "bad_features")
    return array


def parse(req: SentimentRequest, context: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One canonical row (features as float32 arrays) and the predict options."""
    limits = context.limits
    manifest = context.manifest
    check_text("text", req.text, limits.max_text_chars)
    if not req.text.strip():
        raise ApiError(
            422, "text: empty: send the utterance's text (the adapter reads it with the features)", "empty_text"
        )
    regression = manifest.get("task") == "msa"
    if req.decode is not None and regression:
        raise ApiError(
            422,
            f"decode: this adapter predicts a score (task {manifest.get('task')!r}); decode applies to ERC adapters",
            "bad_option",
        )
    needs = bool(manifest.get("needs_features", True))
    widths = feature_widths(manifest)
    row: dict[str, Any] = {"text": req.text}
    for name in MODALITIES:
        seq = getattr(req, name)
        if seq is None:
            if needs:
                width = f" ({widths[name]} numbers a frame)" if widths else ""
                raise ApiError(
                    422,
                    f"{name}: missing; this adapter reads {name} features, T x D numbers{width}",
                    "missing_features",
                )
            continue
        if not needs:  # a text-only adapter (the ablation): checked, not read
            check_features(name, seq, limits)
            req._warnings.append(f"{name} features accepted but not used: this adapter reads the text alone")
            continue
        row[name] = _features(name, seq, widths[name] if widths else None, limits)
    req._manifest = manifest
    options: dict[str, Any] = {"decode": req.decode} if req.decode else {}
    return [row], options


# --------------------------------------------------------------------------- answers


def _replica() -> str | None:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (a direct call): no id
        return None


def backbone_info(manifest: dict[str, Any]) -> BackboneInfo:
    """The adapter's backbone and the per-process cache of frozen backbones (this replica's)."""
    from sentiray.families.mse_adapter import loaded_backbones

    path = str(manifest.get("backbone") or "")
    held = loaded_backbones()
    mine = next((key for key in held if key[0] == path), None)
    name = os.path.basename(path.rstrip("/")) or path
    return BackboneInfo(
        name=name,
        dtype=mine[1] if mine else None,
        device=mine[2] if mine else None,
        loaded_in_replica=len(held),
        replica=_replica(),
    )


def respond(req: SentimentRequest, predictions: list[dict[str, Any]], model_info: dict[str, Any]) -> SentimentResponse:
    pred = predictions[0]
    if pred.get("error"):  # the model refused a row parse let through: the client's input, a 422
        raise ApiError(422, f"the adapter could not read this input ({pred['error']})", "unprocessable_input")
    manifest = req._manifest
    warnings = list(req._warnings)
    regression = "score" in pred
    if pred.get("unparseable"):
        what = "the score is 0" if regression else f"the label is class 0 ({pred.get('label')})"
        warnings.append(
            f"the adapter's answer {pred.get('answer')!r} did not parse: {what}, as the reference code counts it"
        )
    info = ModelInfo(**{k: model_info[k] for k in ("id", "name", "version")})
    return SentimentResponse(
        task=manifest.get("task", "msa" if regression else "erc"),
        score=float(pred["score"]) if regression else None,
        label=None if regression else pred["label"],
        probabilities=None if regression else pred["probs"],
        answer=pred.get("answer"),
        unparseable=bool(pred.get("unparseable")),
        model=info,
        backbone=backbone_info(manifest),
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
        summary="Sentiment score (regression adapters) or emotion and probabilities (ERC adapters) of one utterance "
        "from its text, audio and video features",
    ),
)
