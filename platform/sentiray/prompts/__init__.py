"""Prompts after MulCoT-RD, shared by the teacher, training, augmentation, evaluation and serving.

Templates are plain text files (``templates/<kind>_<variant>.txt``) filled with
``str.format`` fields ``{text}``, ``{aspect}``, ``{label}``. A folder given as
``prompts_dir`` overrides any of them by file name.

Kinds:
- ``chain``: label-free reasoning chain (pass 1, the c-stream, augmentation, serving)
- ``rationalize``: label-conditioned chain for samples the teacher got wrong (pass 2)
- ``label``: label-only prompt (the l-stream), answered with ``"Prediction": <label>``
- ``explain_text`` / ``describe_image``: LRSA's two rationales
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sentiray.data.schema import DataError

TEMPLATE_DIR = Path(__file__).parent / "templates"
KINDS = ("chain", "rationalize", "label", "explain_text", "describe_image")


def variant(task: str) -> str:
    """Aspect-level tasks get the prompts that name the aspect."""
    return "masc" if task in ("masc", "mabsa") else "msc"


@functools.lru_cache(maxsize=64)
def _read_template(name: str, prompts_dir: str | None) -> str:
    if prompts_dir:
        custom = Path(prompts_dir) / name
        if custom.exists():
            return custom.read_text().strip()
    path = TEMPLATE_DIR / name
    if not path.exists():
        raise DataError(f"no prompt template {name!r}")
    return path.read_text().strip()


def template(kind: str, task: str = "msc", prompts_dir: str | None = None) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {KINDS}")
    if kind in ("explain_text", "describe_image"):
        return _read_template(f"{kind}.txt", prompts_dir)
    return _read_template(f"{kind}_{variant(task)}.txt", prompts_dir)


def render(kind: str, row: dict[str, Any], prompts_dir: str | None = None, label: str | None = None) -> str:
    """The prompt text of ``kind`` for one canonical row."""
    task = row.get("task") or "msc"
    aspect = row.get("aspect") or ""
    return template(kind, task, prompts_dir).format(
        text=row.get("text") or "", aspect=aspect, label=label or row.get("label") or ""
    )


def has_image(row: dict[str, Any]) -> bool:
    return bool(row.get("image")) or bool(row.get("image_uri"))


def messages(prompt: str, with_image: bool) -> list[dict[str, Any]]:
    """Chat messages for one prompt; the image (if any) comes first, as in MulCoT-RD."""
    content: list[dict[str, Any]] = []
    if with_image:
        content.append({"type": "image"})
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def label_target(label: str) -> str:
    """The l-stream answer."""
    return f'"Prediction": "{label}"'
