"""Twitter-2015 / Twitter-2017 (TomBERT release, aspect-level sentiment, task ``masc``).

A folder with ``train.tsv``, ``dev.tsv``, ``test.tsv``: a header line, then five
tab-separated columns ``index, label (0 neg / 1 neu / 2 pos), image file, tweet with
$T$ in place of the aspect, aspect``; one row per (tweet, aspect). Images come from
``twitter2015_images/`` (``twitter2017_images/``, or ``images/``) inside the folder or
beside it.
"""

from __future__ import annotations

import json

from sentiray.config import DataConfig
from sentiray.data.readers import Folder, ImageStore, RowProblem, decode_text, find_image_dir, register
from sentiray.data.schema import SPLITS, DataError, PreparedDataset, Reject, canonical_row

LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
TARGET = "$T$"


@register("twitter2015", "twitter2017", task="masc")
def read_twitter(cfg: DataConfig) -> PreparedDataset:
    """Read a Twitter-2015/2017 folder; bad rows go to rejects, the rest are kept."""
    folder = Folder.open(cfg.input)
    missing = [f"{split}.tsv" for split in SPLITS if not folder.exists(f"{split}.tsv")]
    if missing:
        raise DataError(f"{folder.uri()} is not a {cfg.format} folder: missing {', '.join(missing)}")
    images = ImageStore(find_image_dir(folder, [f"{cfg.format}_images", folder.name + "_images"]), cfg.image_mode)

    data = PreparedDataset(source=cfg.format, task="masc", splits={})
    no_target = 0
    for split in SPLITS:
        text, _ = decode_text(folder.read_bytes(f"{split}.tsv"))
        # Not splitlines(): it also cuts at \x85 or \u2028, which occur inside tweets.
        lines = [line.rstrip("\r") for line in text.split("\n")[1:]]  # line 1 is the header
        images.prefetch([cols[2].strip() for cols in (line.split("\t") for line in lines) if len(cols) == 5])
        rows, seen = [], set()
        for line_no, line in enumerate(lines, start=2):
            if not line.strip():
                continue
            index = line.split("\t", 1)[0].strip()
            row_id = f"{cfg.format}-{split}-{index}"
            try:
                if not index:
                    raise RowProblem("bad_columns", f"line {line_no} has no index")
                if row_id in seen:
                    raise RowProblem("duplicate_id", f"line {line_no}: index {index} already used in {split}.tsv")
                row = _row(line, line_no, row_id, cfg.format, images)
            except RowProblem as problem:
                data.rejects.append(Reject(split, row_id, cfg.format, problem.reason, raw=line))
                continue
            seen.add(row_id)
            no_target += TARGET not in line
            rows.append(row)
        data.splits[split] = rows
    # A tweet without $T$ is kept (the aspect is still given) but worth knowing about.
    data.notes["no_target_marker"] = no_target
    return data


def _row(line: str, line_no: int, row_id: str, source: str, images: ImageStore) -> dict:
    columns = line.split("\t")
    if len(columns) != 5:
        raise RowProblem("bad_columns", f"line {line_no} has {len(columns)} tab-separated columns, expected 5")
    _, label, image_name, masked, aspect = (c.strip() for c in columns)
    if label not in LABELS:
        raise RowProblem("bad_label", f"line {line_no}: label {label!r} is not 0, 1 or 2")
    if not masked or not aspect:
        raise RowProblem("empty_text", f"line {line_no}: empty tweet or aspect")
    return canonical_row(
        id=row_id,
        task="masc",
        text=masked.replace(TARGET, aspect),
        aspect=aspect,
        label=LABELS[label],
        source=source,
        meta=json.dumps({"masked_text": masked, "image_id": image_name}),
        **images.fields(image_name),
    )
