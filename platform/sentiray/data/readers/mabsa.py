"""VLP-MABSA JSON (aspect spans with polarity, task ``mabsa``, for JMASA / MATE).

A folder with ``train.json``, ``dev.json``, ``test.json``, each a list of
``{"words": [...], "image_id": "123.jpg", "aspects": [{"from": i, "to": j,
"polarity": "POS" | "NEU" | "NEG", "term": [...]}]}`` (``to`` exclusive). Images are
found by ``image_id`` in ``images/`` or a ``*_images`` folder, inside the folder or
beside it.
"""

from __future__ import annotations

import json
from typing import Any

from sentiray.config import DataConfig
from sentiray.data.readers import Folder, ImageStore, RowProblem, decode_text, find_image_dir, register
from sentiray.data.schema import POLARITY_TAGS, SPLITS, DataError, PreparedDataset, Reject, canonical_row


@register("mabsa_json", task="mabsa")
def read_mabsa(cfg: DataConfig) -> PreparedDataset:
    """Read a VLP-MABSA folder; a sentence with any invalid span is rejected whole."""
    folder = Folder.open(cfg.input)
    missing = [f"{split}.json" for split in SPLITS if not folder.exists(f"{split}.json")]
    if missing:
        raise DataError(f"{folder.uri()} is not a VLP-MABSA folder: missing {', '.join(missing)}")
    images = ImageStore(find_image_dir(folder, [folder.name + "_images"]), cfg.image_mode)

    data = PreparedDataset(source=cfg.format, task="mabsa", splits={})
    n_spans = 0
    for split in SPLITS:
        try:
            items = json.loads(decode_text(folder.read_bytes(f"{split}.json"))[0])
        except json.JSONDecodeError as exc:
            raise DataError(f"{folder.uri(split + '.json')} is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise DataError(f"{folder.uri(split + '.json')}: expected a list of sentences, got {type(items).__name__}")
        images.prefetch(
            [item["image_id"] for item in items if isinstance(item, dict) and isinstance(item.get("image_id"), str)]
        )
        rows = []
        for i, item in enumerate(items):
            row_id = f"{cfg.format}-{split}-{i}"
            try:
                row = _row(item, row_id, cfg.format, images)
            except RowProblem as problem:
                data.rejects.append(
                    Reject(split, row_id, cfg.format, problem.reason, raw=json.dumps(item, ensure_ascii=False))
                )
                continue
            n_spans += len(row["spans"])
            rows.append(row)
        data.splits[split] = rows
    data.notes["spans"] = n_spans
    return data


def _row(item: Any, row_id: str, source: str, images: ImageStore) -> dict:
    if not isinstance(item, dict):
        raise RowProblem("bad_item", f"expected an object, got {type(item).__name__}")
    words = item.get("words")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise RowProblem("bad_item", "'words' is not a list of strings")
    if not any(w.strip() for w in words):
        raise RowProblem("empty_text", "no words")
    image_id = item.get("image_id")
    if not isinstance(image_id, str):
        raise RowProblem("bad_item", "'image_id' is not a string")
    aspects = item.get("aspects") or []
    if not isinstance(aspects, list):
        raise RowProblem("bad_item", "'aspects' is not a list")
    spans = [_span(a, words) for a in aspects]
    return canonical_row(
        id=row_id,
        task="mabsa",
        text=" ".join(words),
        words=words,
        spans=spans,
        label=None,  # span task: the polarity lives in each span
        source=source,
        meta=json.dumps({"image_id": image_id}),
        **images.fields(image_id),
    )


def _span(aspect: Any, words: list[str]) -> dict[str, Any]:
    if not isinstance(aspect, dict):
        raise RowProblem("bad_span", f"aspect {aspect!r} is not an object")
    start, end, tag = aspect.get("from"), aspect.get("to"), aspect.get("polarity")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(words)):
        raise RowProblem("bad_span", f"span [{start}, {end}) is outside the {len(words)} words")
    if tag not in POLARITY_TAGS:
        raise RowProblem("bad_polarity", f"polarity {tag!r} is not one of {sorted(POLARITY_TAGS)}")
    term = aspect.get("term")
    # The release gives the term as a word list; a plain string is accepted too.
    expected = words[start:end] if not isinstance(term, str) else " ".join(words[start:end])
    if term is not None and term != expected:
        raise RowProblem("term_mismatch", f"term {term!r} != words[{start}:{end}] {words[start:end]!r}")
    return {"start": start, "end": end, "polarity": POLARITY_TAGS[tag]}
