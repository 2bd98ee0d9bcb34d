"""MVSA-Single / MVSA-Multiple raw release (post-level image-text sentiment, task ``msc``).

A folder with ``data/<id>.jpg``, ``data/<id>.txt`` (the tweet) and
``labelResultAll.txt``: a header line, then ``ID<TAB>text_label,image_label`` per post
(MVSA-Multiple: three such pairs, one per annotator). Cleaning, the usual one:

1. Multiple: the majority label per modality (no majority -> dropped, ``no_majority``);
2. text and image agree -> that label; one neutral, one polar -> the polar one;
   one positive, one negative -> dropped (``conflict_pos_neg``);
3. posts whose text or image is missing or unreadable are dropped too.

The release has no splits: the kept posts are shuffled with ``cfg.seed`` and cut by
``cfg.split_ratios`` (8:1:1). Row ids (``mvsa_single-<ID>``) do not depend on the split,
so they stay the same under another seed.
"""

from __future__ import annotations

import json
from collections import Counter

from sentiray.config import DataConfig
from sentiray.data.readers import Folder, ImageStore, RowProblem, decode_text, register, split_by_ratios
from sentiray.data.schema import SENTIMENT_LABELS, DataError, PreparedDataset, Reject, canonical_row

LABEL_FILE = "labelResultAll.txt"
ANNOTATORS = {"mvsa_single": 1, "mvsa_multiple": 3}
UNSPLIT = "unsplit"  # the split recorded on rejects: posts are dropped before splitting


@register("mvsa_single", "mvsa_multiple", task="msc")
def read_mvsa(cfg: DataConfig) -> PreparedDataset:
    """Read an MVSA folder, clean the labels, and split the kept posts 8:1:1."""
    folder = Folder.open(cfg.input)
    if not folder.exists(LABEL_FILE) or not folder.isdir("data"):
        raise DataError(f"{folder.uri()} is not an MVSA folder: expected {LABEL_FILE} and data/")
    posts_dir = folder.child("data")
    images = ImageStore(posts_dir, cfg.image_mode)
    data = PreparedDataset(source=cfg.format, task="msc", splits={})
    dropped: Counter[str] = Counter()
    label_rule: Counter[str] = Counter()

    def reject(post_id: str | None, problem: RowProblem, raw: str) -> None:
        dropped[problem.code] += 1
        data.rejects.append(
            Reject(UNSPLIT, f"{cfg.format}-{post_id}" if post_id else None, cfg.format, problem.reason, raw)
        )

    # 1. labels: one post per line, cleaned to a single label
    label_text, _ = decode_text(folder.read_bytes(LABEL_FILE))
    labelled: list[tuple[str, str, str, dict]] = []  # (post id, label, rule that decided it, meta)
    seen: set[str] = set()
    n_posts = 0
    for line_no, line in enumerate(label_text.split("\n")[1:], start=2):  # line 1 is the header
        if not line.strip():
            continue
        n_posts += 1
        fields = line.split()
        post_id = fields[0]
        try:
            if post_id in seen:
                raise RowProblem("duplicate_id", f"line {line_no}: post {post_id} already labelled")
            seen.add(post_id)
            label, meta, rule = _clean_labels(fields[1:], ANNOTATORS[cfg.format], line_no)
        except RowProblem as problem:
            reject(post_id, problem, line)
            continue
        labelled.append((post_id, label, rule, meta))

    # 2. texts and images: read concurrently, then checked post by post
    names = set(posts_dir.listdir())
    texts = posts_dir.read_many([f"{pid}.txt" for pid, *_ in labelled if f"{pid}.txt" in names])
    images.prefetch([f"{pid}.jpg" for pid, *_ in labelled])
    kept = []
    fallback_decoded = 0
    for post_id, label, rule, meta in labelled:
        raw = texts.get(f"{post_id}.txt")
        try:
            if raw is None or isinstance(raw, Exception):
                raise RowProblem("missing_text", f"data/{post_id}.txt not found or unreadable")
            text, fallback = decode_text(raw)
            text = text.strip()
            if not text:
                raise RowProblem("empty_text", f"data/{post_id}.txt is empty")
            image = images.fields(f"{post_id}.jpg")
        except RowProblem as problem:
            reject(post_id, problem, json.dumps({"id": post_id, **meta}))
            continue
        fallback_decoded += fallback
        label_rule[rule] += 1
        kept.append(
            canonical_row(
                id=f"{cfg.format}-{post_id}",
                task="msc",
                text=text,
                label=label,
                source=cfg.format,
                meta=json.dumps(meta),
                **image,
            )
        )

    data.splits = split_by_ratios(kept, cfg.split_ratios, cfg.seed)
    data.notes.update(
        {
            "posts": n_posts,
            "kept": len(kept),
            "dropped": dict(sorted(dropped.items())),
            "label_rule": dict(sorted(label_rule.items())),
            "text_fallback_decoding": fallback_decoded,
        }
    )
    return data


def _clean_labels(pairs: list[str], annotators: int, line_no: int) -> tuple[str, dict, str]:
    """``["text,image", ...]`` of one post -> (label, meta, which rule decided)."""
    if len(pairs) != annotators:
        raise RowProblem("bad_columns", f"line {line_no}: {len(pairs)} label pairs, expected {annotators}")
    text_votes, image_votes = [], []
    for pair in pairs:
        parts = pair.lower().split(",")
        if len(parts) != 2 or any(p not in SENTIMENT_LABELS for p in parts):
            raise RowProblem(
                "bad_label", f"line {line_no}: {pair!r} is not 'text,image' with labels {SENTIMENT_LABELS}"
            )
        text_votes.append(parts[0])
        image_votes.append(parts[1])
    text_label, image_label = _majority(text_votes, "text", line_no), _majority(image_votes, "image", line_no)
    meta = {"text_label": text_label, "image_label": image_label}
    if annotators > 1:
        meta["annotations"] = pairs
    if text_label == image_label:
        return text_label, meta, "agree"
    if "neutral" in (text_label, image_label):
        polar = image_label if text_label == "neutral" else text_label
        return polar, meta, "neutral_plus_polar"
    raise RowProblem("conflict_pos_neg", f"line {line_no}: text {text_label}, image {image_label}")


def _majority(votes: list[str], modality: str, line_no: int) -> str:
    label, count = Counter(votes).most_common(1)[0]
    if count * 2 <= len(votes):
        raise RowProblem("no_majority", f"line {line_no}: {modality} labels {votes} have no majority")
    return label
