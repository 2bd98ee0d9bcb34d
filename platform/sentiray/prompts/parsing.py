"""Reading a label out of a model's answer (the chain's fields: sentiray.data.chains).

The rule of method.md: find "Prediction" and take the first label word after it; if there
is none, take the last label word anywhere in the text; otherwise the answer is
unparseable (None).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sentiray.data.schema import SENTIMENT_LABELS


def _label_pattern(labels: Iterable[str]) -> re.Pattern[str]:
    words = sorted(labels, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def parse_label(text: str | None, labels: Iterable[str] = SENTIMENT_LABELS) -> str | None:
    if not text:
        return None
    labels = tuple(labels)
    pattern = _label_pattern(labels)
    at = text.lower().find("prediction")
    if at >= 0:
        match = pattern.search(text, at + len("prediction"))
        if match:
            return match.group(1).lower()
    found = pattern.findall(text)
    return found[-1].lower() if found else None
