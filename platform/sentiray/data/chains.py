"""The MulCoT reasoning-chain format: five named fields, one per line, in order.

    "Text_analysis": "...",
    "Image_analysis": "...",
    "Conflict_resolution": "...",
    "Final_conclusion": "...",
    "Prediction": "positive"

Wrapped in braces it is valid JSON. Used by the synthetic generator (gold chains), the
teacher (parsing answers), training targets and evaluation.
"""

from __future__ import annotations

import json
import re

from sentiray.data.schema import CHAIN_FIELDS

_FIELD_KEYS = {re.sub(r"[\s_\-]", "", f).lower(): f for f in CHAIN_FIELDS}
_FIELD_MARKER = re.compile(
    r"[\"']?\b(" + "|".join(r"[\s_\-]*".join(f.split("_")) for f in CHAIN_FIELDS) + r")\b[\"']?\s*[:=]",
    re.IGNORECASE,
)


def format_chain(fields: dict[str, str]) -> str:
    """Render the five MulCoT fields, one ``"Name": "value",`` line each, in order."""
    missing = [f for f in CHAIN_FIELDS if f not in fields]
    unknown = [k for k in fields if k not in CHAIN_FIELDS]
    if missing or unknown:
        raise ValueError(f"chain fields: missing {missing}, unknown {unknown}")
    # json.dumps escapes quotes and newlines, so each field stays on one line.
    lines = [f'"{name}": {json.dumps(str(fields[name]), ensure_ascii=False)}' for name in CHAIN_FIELDS]
    return ",\n".join(lines)


def parse_chain(text: str) -> dict[str, str]:
    """The fields found in a chain (inverse of :func:`format_chain`), tolerant of model output.

    Accepts the exact format, the same wrapped in braces or a code fence, and looser
    ``Name: value`` lines (any case, spaces or hyphens for underscores, quotes optional).
    Fields that are not found are absent from the result.
    """
    body = re.sub(r"```(?:json)?", "", text or "").strip()
    found = _parse_chain_json(body)
    if found:
        return found
    markers = list(_FIELD_MARKER.finditer(body))
    out: dict[str, str] = {}
    for k, m in enumerate(markers):
        name = _FIELD_KEYS[re.sub(r"[\s_\-]", "", m.group(1)).lower()]
        end = markers[k + 1].start() if k + 1 < len(markers) else len(body)
        value = _clean_value(body[m.end() : end])
        out.setdefault(name, _norm_prediction(value) if name == "Prediction" else value)
    return out


def _parse_chain_json(body: str) -> dict[str, str]:
    start, stop = body.find("{"), body.rfind("}")
    candidates = [body[start : stop + 1]] if 0 <= start < stop else []
    candidates.append("{" + body.rstrip().rstrip(",") + "}")
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out = {}
            for key, value in obj.items():
                name = _FIELD_KEYS.get(re.sub(r"[\s_\-]", "", str(key)).lower())
                if name is not None:
                    out[name] = _norm_prediction(str(value)) if name == "Prediction" else str(value).strip()
            if out:
                return out
    return {}


def _norm_prediction(value: str) -> str:
    # Models write "Positive.", "**negative**" and the like.
    return value.strip().strip(" .,;:!\"'`*").lower()


def _clean_value(raw: str) -> str:
    value = raw.strip().rstrip("}").strip().rstrip(",").strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value)).strip()
        except ValueError:
            pass
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value.strip()
