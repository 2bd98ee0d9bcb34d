"""Aspect spans: their forms, BIO tags, and the metrics of JMASA / MATE / MASC as VLP-MABSA
computes them (NUSTM/VLP-MABSA ``src/model/metrics.py``, ``AESCSpanMetric``).

A span is ``(start, end, polarity)`` over the post's words, ``end`` exclusive (VLP-MABSA's
JSON ``from``/``to``); the polarity is ``positive`` / ``neutral`` / ``negative`` (``POS`` /
``NEU`` / ``NEG`` are read too; ``CON`` / ``conflict`` marks a conflict aspect of the gold).

The arithmetic, exactly as the reference code has it (and the field reports it):

- per post, predicted spans go into a dict keyed by (start, end): a span predicted twice
  counts once, with the polarity of its *last* occurrence; a prediction on a gold conflict
  span, or with no valid polarity, is dropped; malformed predictions (start >= end, not a
  triple) are dropped and the post counts as ``invalid``;
- gold spans the same way (a duplicated gold span counts once; conflict spans are left out);
- JMASA (``aesc``): micro P/R/F1 over exact (start, end, polarity) triples, summed over posts;
- MATE (``ae``): micro P/R/F1 over the (start, end) keys of *those same* dicts (the
  reference computes it on the polarity-filtered dicts, not on every predicted span);
- MASC (``sc``): over the predicted spans that are also gold spans only (``masc_n`` of
  them): accuracy = right / n; F1 = the harmonic mean of the *macro* precision and the
  *macro* recall over the polarities seen in those pairs (not the mean of per-class F1s:
  the reference's own comment calls it a wrong-doing kept for comparability, and so do we);
- every ratio carries the reference's smoothing (``tp / (tp + fp + 1e-13)``, ``... + 1e-12``),
  so an empty denominator gives 0 and a perfect score 0.9999999999999.

Values are fractions; the reference prints ``round(100 * value, 2)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentiray.data.schema import DataError

POLARITIES = ("positive", "neutral", "negative")
CONFLICT = "conflict"
_ALIASES = {
    "pos": "positive",
    "neu": "neutral",
    "neg": "negative",
    "con": CONFLICT,
    "positive": "positive",
    "neutral": "neutral",
    "negative": "negative",
    "conflict": CONFLICT,
}

Span = tuple[int, int, str]

# --------------------------------------------------------------------------- span forms


def polarity_name(value: Any) -> str | None:
    """``POS``/``positive``/... -> ``positive``; None stays None; anything else raises."""
    if value is None:
        return None
    name = _ALIASES.get(str(value).strip().lower())
    if name is None:
        raise DataError(f"unknown polarity {value!r}; expected POS/NEU/NEG or positive/neutral/negative")
    return name


def as_triple(item: Any) -> tuple[Any, Any, Any] | None:
    """``[start, end, polarity]`` or ``{"start", "end", "polarity"}`` (or VLP's ``from``/``to``)
    -> a raw triple; None when it has another shape."""
    if isinstance(item, dict):
        start = item.get("start", item.get("from"))
        end = item.get("end", item.get("to"))
        return (start, end, item.get("polarity")) if start is not None and end is not None else None
    if isinstance(item, (list, tuple)) and len(item) == 3:
        return item[0], item[1], item[2]
    return None


def _index(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 0:
        return None
    return int(value)


def parse_gold(items: Iterable[Any], where: str = "gold") -> list[Span]:
    """Gold spans as triples; a malformed one raises naming ``where`` (gold comes from data)."""
    out = []
    for item in items or ():
        raw = as_triple(item)
        start, end = (_index(raw[0]), _index(raw[1])) if raw else (None, None)
        if raw is None or start is None or end is None or start >= end:
            raise DataError(f"{where}: a gold span must be [start, end, polarity] with 0 <= start < end, got {item!r}")
        polarity = polarity_name(raw[2])
        if polarity is None:
            raise DataError(f"{where}: gold span {item!r} has no polarity")
        out.append((start, end, polarity))
    return out


def parse_pred(items: Iterable[Any], where: str = "pred") -> tuple[list[tuple[int, int, str | None]], bool]:
    """(predicted spans, whether any was malformed). A malformed prediction is dropped, as the
    reference drops an ill-formed pointer triple; a null polarity is kept (and later ignored)."""
    out, invalid = [], False
    for item in items or ():
        raw = as_triple(item)
        start, end = (_index(raw[0]), _index(raw[1])) if raw else (None, None)
        if raw is None or start is None or end is None or start >= end:
            invalid = True
            continue
        out.append((start, end, polarity_name(raw[2])))
    return out, invalid


# --------------------------------------------------------------------------- BIO tags

OUTSIDE = "O"
TAG_POLARITY = {"POS": "positive", "NEU": "neutral", "NEG": "negative"}
POLARITY_TAG = {v: k for k, v in TAG_POLARITY.items()}
# Tag vocabulary of the JMASA tagger: O, then B-/I- per polarity.
TAGS = (OUTSIDE,) + tuple(f"{bi}-{t}" for t in ("POS", "NEU", "NEG") for bi in ("B", "I"))


def to_bio(spans: Iterable[Span], n_words: int) -> list[str]:
    """One tag per word: ``B-POS`` on a span's first word, ``I-POS`` on the rest, ``O`` elsewhere.

    Overlapping gold spans cannot be tagged: raises DataError."""
    tags = [OUTSIDE] * n_words
    for start, end, polarity in spans:
        if not 0 <= start < end <= n_words:
            raise DataError(f"span ({start}, {end}) is outside the {n_words} words")
        if any(t != OUTSIDE for t in tags[start:end]):
            raise DataError(f"span ({start}, {end}) overlaps another span: BIO tags cannot hold both")
        tag = POLARITY_TAG[polarity_name(polarity)]
        tags[start:end] = [f"B-{tag}"] + [f"I-{tag}"] * (end - start - 1)
    return tags


def from_bio(tags: Sequence[str]) -> list[Span]:
    """Spans of a tag sequence, conlleval's chunking: a span starts at ``B-X``, or at ``I-X``
    after ``O`` or after another polarity, and runs over the ``I-X`` that follow."""
    spans: list[Span] = []
    start, current = None, None
    for i, tag in enumerate(list(tags) + [OUTSIDE]):
        bi, _, kind = tag.partition("-")
        continues = bi == "I" and kind == current
        if current is not None and not continues:
            spans.append((start, i, TAG_POLARITY[current]))
            current = None
        if bi == "B" or (bi == "I" and not continues):
            start, current = i, kind
    return spans


# --------------------------------------------------------------------------- VLP-MABSA metrics


def _tp_fn_fp(preds: Iterable[Any], golds: Iterable[Any]) -> tuple[int, int, int]:
    """The reference's ``_compute_tp_fn_fp`` on lists (each key counts once)."""
    ps = {key: 1 for key in preds}
    ts = {key: 1 for key in golds}
    tp = sum(1 for key in ts if key in ps)
    return tp, len(ts) - tp, len(ps) - tp


def _f_pre_rec(tp: float, fn: float, fp: float) -> tuple[float, float, float]:
    """The reference's ``_compute_f_pre_rec`` with beta 1, smoothing included."""
    pre = tp / (fp + tp + 1e-13)
    rec = tp / (fn + tp + 1e-13)
    return 2 * pre * rec / (pre + rec + 1e-13), pre, rec


@dataclass
class SpanCounts:
    """Counts accumulated over posts, as ``AESCSpanMetric`` keeps them."""

    aesc_tp: int = 0
    aesc_fp: int = 0
    aesc_fn: int = 0
    ae_tp: int = 0
    ae_fp: int = 0
    ae_fn: int = 0
    sc_tp: Counter = field(default_factory=Counter)
    sc_fp: Counter = field(default_factory=Counter)
    sc_fn: Counter = field(default_factory=Counter)
    sc_right: int = 0
    sc_all_num: int = 0
    invalid: int = 0
    total: int = 0

    def add(self, pred: Sequence[tuple[int, int, str | None]], gold: Sequence[Span], invalid: bool = False) -> None:
        """One post (``AESCSpanMetric.evaluate`` for one sequence)."""
        self.total += 1
        self.invalid += int(invalid)
        target: dict[tuple[int, int], str] = {}
        conflicts = set()
        for start, end, polarity in gold:
            if polarity != CONFLICT:
                target[(start, end)] = polarity
            else:
                conflicts.add((start, end))
        predicted: dict[tuple[int, int], str] = {}
        for start, end, polarity in pred:
            if (start, end) not in conflicts and polarity in POLARITIES:
                predicted[(start, end)] = polarity  # a repeated span keeps its last polarity
        tp, fn, fp = _tp_fn_fp([(*k, v) for k, v in predicted.items()], [(*k, v) for k, v in target.items()])
        self.aesc_tp, self.aesc_fn, self.aesc_fp = self.aesc_tp + tp, self.aesc_fn + fn, self.aesc_fp + fp
        tp, fn, fp = _tp_fn_fp(predicted, target)
        self.ae_tp, self.ae_fn, self.ae_fp = self.ae_tp + tp, self.ae_fn + fn, self.ae_fp + fp
        for key, polarity in predicted.items():
            if key not in target:
                continue
            self.sc_all_num += 1
            if target[key] == polarity:
                self.sc_tp[polarity] += 1
                self.sc_right += 1
            else:
                self.sc_fp[polarity] += 1
                self.sc_fn[target[key]] += 1

    def metrics(self) -> dict[str, float]:
        """``get_metric`` as fractions (unrounded)."""
        out: dict[str, float] = {}
        out["jmasa_f1"], out["jmasa_p"], out["jmasa_r"] = _f_pre_rec(self.aesc_tp, self.aesc_fn, self.aesc_fp)
        out["mate_f1"], out["mate_p"], out["mate_r"] = _f_pre_rec(self.ae_tp, self.ae_fn, self.ae_fp)
        tags = set(self.sc_tp) | set(self.sc_fp) | set(self.sc_fn)
        pre_sum = rec_sum = 0.0
        for tag in tags:
            _, pre, rec = _f_pre_rec(self.sc_tp[tag], self.sc_fn[tag], self.sc_fp[tag])
            pre_sum += pre
            rec_sum += rec
        rec_sum /= len(tags) + 1e-12
        pre_sum /= len(tags) + 1e-12
        out["masc_acc"] = self.sc_right / (self.sc_all_num + 1e-12)
        out["masc_f1"] = 2 * pre_sum * rec_sum / (pre_sum + rec_sum + 1e-12)
        out["masc_p"], out["masc_r"] = pre_sum, rec_sum
        out["masc_n"] = float(self.sc_all_num)
        out["invalid"] = self.invalid / self.total if self.total else 0.0
        order = (
            "jmasa_p",
            "jmasa_r",
            "jmasa_f1",
            "mate_p",
            "mate_r",
            "mate_f1",
            "masc_acc",
            "masc_f1",
            "masc_p",
            "masc_r",
            "masc_n",
            "invalid",
        )
        return {k: out[k] for k in order}


def span_scores(lines: list[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, float]:
    """``sentiray score --task mabsa``: lines ``{"pred": [[start, end, polarity], ...], "gold": [...]}``."""
    counts = SpanCounts()
    for number, line in enumerate(lines, 1):
        gold = line.get("gold", line.get("label"))
        if not isinstance(gold, list) or not isinstance(line.get("pred"), list):
            raise DataError(f"line {number}: 'pred' and 'gold' must be lists of [start, end, polarity]")
        pred, invalid = parse_pred(line["pred"], f"line {number} pred")
        counts.add(pred, parse_gold(gold, f"line {number} gold"), invalid)
    return counts.metrics()


def masc_label_scores(golds: Sequence[str], preds: Sequence[str | None]) -> dict[str, float]:
    """VLP-MABSA's MASC accuracy and F1 when the aspects are given (one gold span per row):
    each row is a post whose one aspect is extracted right; a prediction with no valid
    polarity (None) leaves the row out, as the reference leaves out such a span."""
    counts = SpanCounts()
    for gold, pred in zip(golds, preds):
        counts.add([(0, 1, polarity_name(pred))], [(0, 1, polarity_name(gold))])
    values = counts.metrics()
    return {k: values[k] for k in ("masc_acc", "masc_f1")}


def masc_scores(lines: list[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, float]:
    """``sentiray score --task masc``: scikit-learn's accuracy / macro-F1 / weighted-F1 (every
    family's aspect-level numbers) plus VLP-MABSA's ``masc_acc`` / ``masc_f1``."""
    from sentiray.evaluate.score import _golds, classification_scores

    values = classification_scores(lines, labels)
    golds = _golds(lines)
    if all(isinstance(g, str) and g.strip().lower() in _ALIASES for g in golds):
        preds = [p if p is None or str(p).strip().lower() in _ALIASES else None for p in (l["pred"] for l in lines)]
        values.update(masc_label_scores(golds, preds))
    return values
