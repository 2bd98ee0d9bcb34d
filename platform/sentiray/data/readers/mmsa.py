"""MMSA pickles: CMU-MOSI, CMU-MOSEI, CH-SIMS, CH-SIMS v2 (regression, task ``msa``).

One pickle (``cfg.input`` is the file, or a folder holding exactly one ``.pkl``): a
dict with ``train``, ``valid`` (our ``dev``) and ``test``, each a dict of parallel
arrays: ``id``, ``raw_text``, ``audio`` (N x T_a x D_a), ``vision`` (N x T_v x D_v),
``audio_lengths``, ``vision_lengths``, ``regression_labels``,
``classification_labels``, ``annotations`` (SIMS also ``regression_labels_T/_A/_V``).
Aligned pickles may lack the ``*_lengths`` arrays: then every frame is kept.

Only open pickles you trust: unpickling runs code chosen by whoever wrote the file.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from typing import Any

import numpy as np

from sentiray.config import DataConfig
from sentiray.data.readers import Folder, RowProblem, feature_frames, register
from sentiray.data.schema import DataError, PreparedDataset, Reject, canonical_row

SPLIT_KEYS = {"train": ("train",), "dev": ("valid", "dev"), "test": ("test",)}
MODALITIES = ("audio", "vision")
# SIMS' unimodal labels, kept in meta: pickle key -> meta key
UNIMODAL = {
    "regression_labels_T": "score_text",
    "regression_labels_A": "score_audio",
    "regression_labels_V": "score_vision",
}
# The parallel arrays a row is built from: all must hold row i.
_USED = {"id", "raw_text", "regression_labels", "audio", "vision", "audio_lengths", "vision_lengths", *UNIMODAL}


@register("mosi", "mosei", "sims", "simsv2", task="msa")
def read_mmsa(cfg: DataConfig) -> PreparedDataset:
    """Read an MMSA pickle: features cut to their true length, -inf/NaN set to 0."""
    blob = _load(cfg.input)
    data = PreparedDataset(source=cfg.format, task="msa", splits={})
    nonfinite: Counter[str] = Counter({m: 0 for m in MODALITIES})
    without_lengths: set[str] = set()
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if k in blob), None)
        if key is None:
            raise DataError(f"{cfg.input}: no {' or '.join(keys)!r} split (keys: {sorted(blob)})")
        part = blob[key]
        for needed in ("id", "raw_text", "regression_labels"):
            if needed not in part:
                raise DataError(f"{cfg.input}: split {key!r} has no {needed!r} array (keys: {sorted(part)})")
        without_lengths |= {m for m in MODALITIES if m in part and f"{m}_lengths" not in part}
        data.splits[split] = _rows(part, split, cfg.format, data.rejects, nonfinite)
    data.notes["nonfinite_replaced"] = dict(nonfinite)  # values set to 0, per modality
    data.notes["no_lengths"] = sorted(without_lengths)  # modalities kept at their stored length
    return data


def _load(uri: str) -> dict:
    folder = Folder.open(uri)
    if folder.isdir():
        pickles = [n for n in folder.listdir() if n.endswith(".pkl")]
        if len(pickles) != 1:
            raise DataError(f"{uri} must hold exactly one .pkl file, found {pickles or 'none'}")
        name = pickles[0]
    elif folder.exists():
        folder, name = folder.parent(), folder.name
    else:
        raise DataError(f"{uri} does not exist")
    # Stream from the file (MOSEI's pickle is several GB; no second copy as bytes).
    with folder.stream(name) as f:
        try:
            blob = pickle.load(f)
        except Exception as exc:
            raise DataError(f"{folder.uri(name)} is not a readable pickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(blob, dict):
        raise DataError(f"{folder.uri(name)}: expected a dict of splits, got {type(blob).__name__}")
    return blob


def _rows(part: dict, split: str, source: str, rejects: list[Reject], nonfinite: Counter) -> list[dict]:
    arrays = {k: v for k, v in part.items() if k in _USED}
    n = max(len(v) for v in arrays.values())
    rows, seen = [], set()
    for i in range(n):
        raw_id = str(part["id"][i]) if i < len(part["id"]) else f"#{i}"
        row_id = f"{source}-{split}-{raw_id}"
        try:
            short = sorted(k for k, v in arrays.items() if len(v) <= i)
            if short:
                raise RowProblem("length_mismatch", f"row {i} is missing from the arrays {short}")
            if row_id in seen:
                raise RowProblem("duplicate_id", f"id {raw_id} appears twice in {split}")
            row, bad = _row(part, i, row_id, raw_id, source)
        except RowProblem as problem:
            rejects.append(Reject(split, row_id, source, problem.reason, raw=f"{split}[{i}] id={raw_id}"))
            continue
        seen.add(row_id)
        nonfinite.update(bad)
        rows.append(row)
    return rows


def _row(part: dict, i: int, row_id: str, raw_id: str, source: str) -> tuple[dict, dict[str, int]]:
    try:
        score = _scalar(part["regression_labels"][i])
    except (TypeError, ValueError, IndexError):
        raise RowProblem("bad_label", f"regression label {part['regression_labels'][i]!r} is not a number") from None
    if not math.isfinite(score):
        raise RowProblem("bad_label", f"regression label {score} is not finite")
    text = str(_plain(part["raw_text"][i])).strip()
    if not text:
        raise RowProblem("empty_text", "raw_text is empty")
    features: dict[str, Any] = {}
    bad: dict[str, int] = {}
    for modality in MODALITIES:
        if modality not in part:
            continue
        lengths = part.get(f"{modality}_lengths")
        length = int(_scalar(lengths[i])) if lengths is not None else None
        features[modality], bad[modality] = feature_frames(part[modality][i], length)
    meta: dict[str, Any] = {"clip_id": raw_id}
    for key, name in (("classification_labels", "classification_label"), ("annotations", "annotation")):
        if key in part and i < len(part[key]):
            meta[name] = _plain(part[key][i])
    for key, name in UNIMODAL.items():
        if key in part:
            meta[name] = _scalar(part[key][i])
    row = canonical_row(
        id=row_id,
        task="msa",
        text=text,
        score=score,
        label="positive" if score > 0 else "negative" if score < 0 else "neutral",
        source=source,
        meta=json.dumps(meta),
        **features,
    )
    return row, bad


def _scalar(value: Any) -> float:
    """A label stored as a number, a 0-d or a 1-element array -> float."""
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def _plain(value: Any) -> Any:
    """A numpy value -> something json can write."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
