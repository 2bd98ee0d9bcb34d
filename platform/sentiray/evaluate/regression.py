"""Multimodal sentiment metrics with MMSA's names and arithmetic, reproduced exactly.

References: thuiar/MMSA ``src/MMSA/utils/metricsTop.py`` (MOSI, MOSEI, SIMS, SIMS-V2) and
MSE-Adapter's copy (AZYoung233/MSE-Adapter ``utils/metricsTop.py``: the SIMS-V2 additions
``Mult_acc_2_weak`` and ``R_squre``, and MELD / CHERMA). The details that decide numbers:

- inputs are float32 (the references hold predictions and labels in float32 tensors), and
  every comparison below is made on float32 values against float64 bin edges: a float32 0.1
  is 0.10000000149 > 0.1, so on SIMS a score of exactly 0.1 (or -0.1) falls in the outer bin;
- MOSI/MOSEI: ``MAE`` and ``Corr`` on the raw values (no clipping); ``Mult_acc_7`` /
  ``Mult_acc_5`` compare ``np.round`` (half to even: 2.5 -> 2, -0.5 -> -0) of the values
  clipped to [-3, 3] / [-2, 2]; ``Has0`` splits at ``>= 0`` (zeros are positive, for labels
  and predictions); ``Non0`` drops the rows whose *label* is 0 and splits at ``> 0`` (a
  prediction of 0 counts as negative there); the F1s are sklearn's weighted F1;
- SIMS/SIMS-V2: everything (``MAE`` and ``Corr`` included) on values clipped to [-1, 1],
  then binned into right-closed intervals (``Mult_acc_2``: [-1, 0], (0, 1], so 0 is
  negative; ``Mult_acc_3``: [-1, -0.1], (-0.1, 0.1], (0.1, 1]; ``Mult_acc_5``: edges -0.7,
  -0.1, 0.1, 0.7); ``F1_score`` is the weighted F1 of the two classes; SIMS-V2 adds
  ``Mult_acc_2_weak`` (``Mult_acc_2`` over the rows whose clipped label is within
  [-0.4, 0.4]) and ``R_squre`` (sklearn's r2, name as in the reference);
- MELD/CHERMA: ``acc`` and ``weight_F1`` (sklearn accuracy and weighted F1) over class
  indices; an answer that does not parse counts as class 0, as in the reference.
- every value is rounded to 4 decimals as MMSA does (``round(x, 4)``).

Where the references would fail (no row with a non-zero label for ``Non0``, no weak row for
``Mult_acc_2_weak``) the value is NaN; so is ``Corr`` of a constant vector, as in numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

# The bin edges of the SIMS metrics (right-closed intervals), from the reference.
SIMS_BINS = {
    "Mult_acc_2": (-1.01, 0.0, 1.01),
    "Mult_acc_3": (-1.01, -0.1, 0.1, 1.01),
    "Mult_acc_5": (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}
WEAK = 0.4  # |label| bound of the weak-sentiment rows (MSE-Adapter's Mult_acc_2_weak)
# The emotion index each data set's reference uses (MSE-Adapter's label_index_mapping).
MELD_LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
CHERMA_LABELS = (
    "anger",
    "disgust",
    "fear",
    "happiness",
    "calm",
    "sadness",
    "surprise",
)  # 愤怒 厌恶 恐惧 高兴 平静 悲伤 惊奇


def _f32(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32).reshape(-1)


def _multiclass_acc(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    # MMSA's __multiclass_acc, NaN (not an error) for no rows
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true)) if len(y_true) else float("nan")


def _corr(preds: np.ndarray, truth: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.corrcoef(preds, truth)[0][1]


def _f1_weighted(truth: np.ndarray, preds: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division warning; the value (0) is the reference's
        return f1_score(truth, preds, average="weighted")


def _round(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(round(v, 4)) for k, v in values.items()}


def mosei(preds: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """MOSI / MOSEI: MMSA's ``__eval_mosei_regression``."""
    from sklearn.metrics import accuracy_score

    test_preds, test_truth = _f32(preds), _f32(labels)
    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    corr = _corr(test_preds, test_truth)
    mult_a7 = _multiclass_acc(np.clip(test_preds, -3.0, 3.0), np.clip(test_truth, -3.0, 3.0))
    mult_a5 = _multiclass_acc(np.clip(test_preds, -2.0, 2.0), np.clip(test_truth, -2.0, 2.0))
    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0], dtype=np.int64)
    if len(non_zeros):
        nz_truth, nz_preds = test_truth[non_zeros] > 0, test_preds[non_zeros] > 0
        non0_acc, non0_f1 = accuracy_score(nz_preds, nz_truth), _f1_weighted(nz_truth, nz_preds)
    else:  # MMSA would raise (an empty float index array)
        non0_acc = non0_f1 = float("nan")
    binary_truth, binary_preds = test_truth >= 0, test_preds >= 0
    return _round(
        {
            "Has0_acc_2": accuracy_score(binary_preds, binary_truth),
            "Has0_F1_score": _f1_weighted(binary_truth, binary_preds),
            "Non0_acc_2": non0_acc,
            "Non0_F1_score": non0_f1,
            "Mult_acc_5": mult_a5,
            "Mult_acc_7": mult_a7,
            "MAE": mae,
            "Corr": corr,
        }
    )


def _sims_classes(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The reference's binning: class i where edges[i] < value <= edges[i+1] (on the float32 values)."""
    out = values.copy()
    for i in range(len(edges) - 1):
        out[np.logical_and(values > edges[i], values <= edges[i + 1])] = i
    return out


def sims(preds: Sequence[float], labels: Sequence[float], v2_additions: bool = False) -> dict[str, float]:
    """SIMS (MMSA's ``__eval_sims_regression``); with ``v2_additions`` MSE-Adapter's SIMS-V2 version."""
    test_preds = np.clip(_f32(preds), a_min=-1.0, a_max=1.0)
    test_truth = np.clip(_f32(labels), a_min=-1.0, a_max=1.0)
    classes = {
        name: (_sims_classes(test_preds, edges), _sims_classes(test_truth, edges)) for name, edges in SIMS_BINS.items()
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    out: dict[str, Any] = {name: _multiclass_acc(*classes[name]) for name in SIMS_BINS}
    a2_preds, a2_truth = classes["Mult_acc_2"]
    out.update(F1_score=_f1_weighted(a2_truth, a2_preds), MAE=mae, Corr=_corr(test_preds, test_truth))
    if v2_additions:
        from sklearn.metrics import r2_score

        weak = np.where((test_truth >= -WEAK) & (test_truth <= WEAK))[0]
        edges = SIMS_BINS["Mult_acc_2"]
        out["Mult_acc_2_weak"] = _multiclass_acc(
            _sims_classes(test_preds[weak], edges), _sims_classes(test_truth[weak], edges)
        )
        out["R_squre"] = r2_score(test_truth, test_preds) if len(test_truth) > 1 else float("nan")
    return _round(out)


def emotion(preds: Sequence[float | int], labels: Sequence[int]) -> dict[str, float]:
    """MELD / CHERMA: accuracy and weighted F1 over class indices (MSE-Adapter's metricsTop)."""
    from sklearn.metrics import accuracy_score

    return _round(
        {"acc": accuracy_score(labels, preds), "weight_F1": _f1_weighted(np.asarray(labels), np.asarray(preds))}
    )


# --------------------------------------------------------------------------- prediction lines


def _number(value: Any, where: str) -> float | None:
    from sentiray.data.schema import DataError

    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number") from None
    if not np.isfinite(out):
        raise DataError(f"{where}: {value!r} is not finite")
    return out


def regression_values(lines: list[dict[str, Any]]) -> tuple[list[float], list[float], int]:
    """(predictions, labels, unparseable) of ``{"pred": float | null, "label": float}`` lines; a
    null prediction (an answer that did not parse) counts as 0, as in the reference code."""
    from sentiray.data.schema import DataError

    preds, golds, unparseable = [], [], 0
    for i, line in enumerate(lines, 1):
        gold = _number(line.get("label", line.get("gold")), f"line {i} label")
        if gold is None:
            raise DataError(f"line {i}: no gold score")
        pred = _number(line["pred"], f"line {i} pred")
        unparseable += pred is None or bool(line.get("unparseable"))
        preds.append(0.0 if pred is None else pred)
        golds.append(gold)
    return preds, golds, unparseable


def class_indices(lines: list[dict[str, Any]], labels: Sequence[str]) -> tuple[list[float], list[int], int]:
    """(predicted indices, gold indices, unparseable) of classification lines holding label names
    or indices; a null prediction counts as class 0 (the reference's fallback)."""
    from sentiray.data.schema import DataError

    index = {name: i for i, name in enumerate(labels)}

    def to_index(value: Any, where: str) -> int:
        if isinstance(value, str) and value in index:
            return index[value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        raise DataError(f"{where}: {value!r} is neither a class index nor one of {list(labels)}")

    preds, golds, unparseable = [], [], 0
    for i, line in enumerate(lines, 1):
        golds.append(to_index(line.get("label", line.get("gold")), f"line {i} label"))
        pred = line["pred"]
        unparseable += pred is None or bool(line.get("unparseable"))
        preds.append(0.0 if pred is None else float(to_index(pred, f"line {i} pred")))
    return preds, golds, unparseable


def scorer(kind: str, default_labels: Sequence[str] = MELD_LABELS):
    """A ``sentiray score`` scorer: lines (+ labels) -> the data set's metrics and ``unparseable``."""

    def score(lines: list[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, float]:
        if kind in ("mosei", "sims", "simsv2"):
            preds, golds, bad = regression_values(lines)
            values = mosei(preds, golds) if kind == "mosei" else sims(preds, golds, v2_additions=kind == "simsv2")
        else:
            preds, golds, bad = class_indices(lines, tuple(labels or default_labels))
            values = emotion(preds, golds)
        return {**values, "unparseable": float(bad)}

    return score
