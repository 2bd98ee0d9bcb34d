"""The canonical data set: one Parquet data set per split, written in shards.

Layout of a data set at URI::

    URI/train/part-00000.parquet ...   rows of the train split
    URI/dev/...  URI/test/...
    URI/rejects/part-00000.parquet    rows that could not be read, with the reason
    URI/_manifest.json                 written last: counts, source, schema version

A data set is complete exactly when ``_manifest.json`` exists (written after every
shard), so a stage that finds it can skip its work on a rerun.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sentiray.data import storage

SCHEMA_VERSION = 1
SPLITS = ("train", "dev", "test")
TASKS = ("msc", "masc", "mabsa", "msa", "erc")

SENTIMENT_LABELS = ("positive", "neutral", "negative")
EMOTION_LABELS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
POLARITY_TAGS = {"POS": "positive", "NEU": "neutral", "NEG": "negative"}

# The MulCoT-RD reasoning chain: these fields, in this order (method.md, section 1).
CHAIN_FIELDS = ("Text_analysis", "Image_analysis", "Conflict_resolution", "Final_conclusion", "Prediction")

SPAN_TYPE = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("polarity", pa.string())])
# Audio / vision feature sequences, T x D per row. On disk: list<list<float32>> (the frames), whose
# values buffer is one contiguous float32 array, so a whole column decodes into zero-copy numpy
# views (:func:`features_from_arrow`); in memory a row holds a 2-D float32 ndarray, never Python
# float lists (32 bytes a value instead of 4: a full MOSEI would need tens of GB). A fixed-size
# list would fix D in the schema, which differs per data set; a flat list + shape column would
# change the canonical columns. Nested lists written before (any float type) read the same.
FEATURES_TYPE = pa.list_(pa.list_(pa.float32()))
FEATURE_COLUMNS = ("audio", "vision")

# Column -> type. Every column but id/task/text/source is nullable.
CANONICAL_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("aspect", pa.string()),
    pa.field("words", pa.list_(pa.string())),
    pa.field("spans", pa.list_(SPAN_TYPE)),
    pa.field("image", pa.binary()),
    pa.field("image_uri", pa.string()),
    pa.field("audio", FEATURES_TYPE),
    pa.field("vision", FEATURES_TYPE),
    pa.field("label", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("gold_chain", pa.string()),
    pa.field("meta", pa.string()),
]
CANONICAL_SCHEMA = pa.schema(CANONICAL_FIELDS)
COLUMNS = tuple(f.name for f in CANONICAL_FIELDS)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string()),
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


def labels_for(task: str) -> tuple[str, ...]:
    """The label vocabulary of a classification task (empty for regression)."""
    if task == "erc":
        return EMOTION_LABELS
    if task == "msa":
        return ()
    return SENTIMENT_LABELS


class DataError(ValueError):
    """A data set or input file is not what it claims to be."""


@dataclass
class Reject:
    split: str
    id: str | None
    source: str
    reason: str
    raw: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "id": self.id,
            "source": self.source,
            "reason": self.reason,
            "raw": self.raw[:2000],
        }


@dataclass
class PreparedDataset:
    """What a reader or generator hands to :func:`write_dataset`."""

    source: str
    task: str
    splits: dict[str, list[dict[str, Any]]]
    rejects: list[Reject] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. cleaning counts per rule


def canonical_row(**values: Any) -> dict[str, Any]:
    """A row with every canonical column, unknown columns refused."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise DataError(f"unknown canonical columns: {sorted(unknown)}")
    row = {name: None for name in COLUMNS}
    row.update(values)
    for required in ("id", "task", "text", "source"):
        if row[required] is None:
            raise DataError(f"canonical row is missing {required!r}")
    return row


def as_features(value: Any, name: str = "features") -> np.ndarray | None:
    """A T x D feature sequence (ndarray or nested lists) as a C-contiguous 2-D float32 array."""
    if value is None:
        return None
    array = np.ascontiguousarray(value, dtype=np.float32)
    if array.ndim != 2:
        raise DataError(f"{name}: expected a T x D sequence of frames, got shape {array.shape}")
    return array


def features_to_arrow(values: list[Any], name: str = "features") -> pa.Array:
    """A column of T x D sequences (or None) -> list<list<float32>>, built from offsets over one
    float32 buffer (no Python floats on the way)."""
    arrays = [as_features(v, name) for v in values]
    frames = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([0 if a is None else a.shape[0] for a in arrays], out=frames[1:])
    widths = np.concatenate(
        [np.full(a.shape[0], a.shape[1], dtype=np.int64) for a in arrays if a is not None]
        or [np.zeros(0, dtype=np.int64)]
    )
    values_offsets = np.zeros(len(widths) + 1, dtype=np.int32)
    np.cumsum(widths, out=values_offsets[1:])
    flat = np.concatenate([a.reshape(-1) for a in arrays if a is not None] or [np.zeros(0, dtype=np.float32)])
    inner = pa.ListArray.from_arrays(pa.array(values_offsets), pa.array(flat, type=pa.float32()))
    mask = pa.array([a is None for a in arrays])
    return pa.ListArray.from_arrays(
        pa.array(frames), inner, mask=mask if any(a is None for a in arrays) else None, type=FEATURES_TYPE
    )


def features_from_arrow(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    """A list<list<float>> column -> one read-only T x D float32 view per row (None for nulls).

    Rows whose frames differ in width (not a T x D array) raise DataError."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray | None] = []
    for chunk in chunks:
        chunk = chunk.cast(FEATURES_TYPE) if chunk.type != FEATURES_TYPE else chunk
        outer = chunk.offsets.to_numpy()  # frame offsets per row (slice-aware)
        inner_arr = chunk.values
        inner = inner_arr.offsets.to_numpy()
        flat = inner_arr.values.to_numpy(zero_copy_only=False)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        for i in range(len(chunk)):
            if not valid[i]:
                out.append(None)
                continue
            lo, hi = outer[i], outer[i + 1]
            widths = np.diff(inner[lo : hi + 1])
            width = int(widths[0]) if len(widths) else 0
            if len(widths) and (widths != width).any():
                raise DataError(f"a feature sequence has frames of different widths {sorted(set(widths.tolist()))}")
            array = flat[inner[lo] : inner[hi]].reshape(hi - lo, width)
            array.flags.writeable = False  # a view into the Arrow buffer
            out.append(array)
    return out


def to_table(rows: list[dict[str, Any]], schema: pa.Schema = CANONICAL_SCHEMA) -> pa.Table:
    """Rows -> table in ``schema``; extra columns (e.g. rationale columns) are kept after it."""
    if not rows:
        return schema.empty_table()
    extra = [k for k in rows[0] if k not in schema.names]
    columns: dict[str, Any] = {name: [r.get(name) for r in rows] for name in schema.names}
    for name in FEATURE_COLUMNS:
        if name in columns:
            columns[name] = features_to_arrow(columns[name], name)
    table = pa.Table.from_pydict(columns, schema=schema)
    for name in extra:
        table = table.append_column(name, pa.array([r.get(name) for r in rows]))
    return table


def write_shards(rows: list[dict[str, Any]], uri: str, shard_rows: int, schema: pa.Schema = CANONICAL_SCHEMA) -> int:
    """Write ``rows`` as ``part-NNNNN.parquet`` files of at most ``shard_rows`` rows; returns shard count."""
    n_shards = max(1, math.ceil(len(rows) / shard_rows))
    for i in range(n_shards):
        chunk = rows[i * shard_rows : (i + 1) * shard_rows]
        buf = io.BytesIO()
        pq.write_table(to_table(chunk, schema), buf, compression="zstd")
        storage.write_bytes(storage.join(uri, f"part-{i:05d}.parquet"), buf.getvalue())
    return n_shards


def write_dataset(data: PreparedDataset, uri: str, shard_rows: int = 2000) -> dict[str, Any]:
    """Write a prepared data set to ``uri`` and return its manifest."""
    if storage.exists(storage.join(uri, "_manifest.json")):
        # Rewriting over a complete data set: drop the old manifest first so that a
        # crash midway leaves an incomplete (and so redone) data set, never a mixed one.
        storage.remove(storage.join(uri, "_manifest.json"))
    for split in list(SPLITS) + ["rejects"]:
        storage.remove(storage.join(uri, split), recursive=True)
    counts: dict[str, int] = {}
    label_counts: dict[str, dict[str, int]] = {}
    for split, rows in data.splits.items():
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        write_shards(rows, storage.join(uri, split), shard_rows)
        counts[split] = len(rows)
        label_counts[split] = dict(Counter(r["label"] for r in rows if r.get("label") is not None))
    reject_rows = [r.as_row() for r in data.rejects]
    write_shards(reject_rows, storage.join(uri, "rejects"), shard_rows, REJECT_SCHEMA)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": data.source,
        "task": data.task,
        "counts": counts,
        "label_counts": label_counts,
        "rejects": len(reject_rows),
        "reject_reasons": dict(Counter(r.reason.split(":")[0] for r in data.rejects)),
        "notes": data.notes,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    storage.write_json(storage.join(uri, "_manifest.json"), manifest)
    return manifest


def is_complete(uri: str) -> bool:
    return storage.exists(storage.join(uri, "_manifest.json"))


def read_manifest(uri: str) -> dict[str, Any]:
    path = storage.join(uri, "_manifest.json")
    if not storage.exists(path):
        raise DataError(f"{uri} is not a complete sentiray data set (no _manifest.json)")
    return storage.read_json(path)


def read_table(uri: str, split: str, columns: Iterable[str] | None = None) -> pa.Table:
    """One split of a data set as a pyarrow table (shards concatenated in order)."""
    split_uri = storage.join(uri, split)
    parts = [p for p in storage.listdir(split_uri) if p.endswith(".parquet")]
    if not parts:
        if split in SPLITS and is_complete(uri):
            return CANONICAL_SCHEMA.empty_table() if split != "rejects" else REJECT_SCHEMA.empty_table()
        raise DataError(f"no split {split!r} under {uri}")
    tables = []
    for part in parts:
        fs, path = storage.filesystem(storage.join(split_uri, part))
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=list(columns) if columns else None))
    return pa.concat_tables(tables, promote_options="default")


def table_rows(table: pa.Table) -> list[dict[str, Any]]:
    """A table's rows as dicts; feature columns as float32 arrays (:func:`features_from_arrow`)."""
    features = [c for c in FEATURE_COLUMNS if c in table.column_names]
    rows = table.drop_columns(features).to_pylist() if features else table.to_pylist()
    if not rows and table.num_rows:
        rows = [{} for _ in range(table.num_rows)]
    for name in features:
        for row, value in zip(rows, features_from_arrow(table.column(name))):
            row[name] = value
    if features:  # keep the table's column order
        order = table.column_names
        rows = [{k: row[k] for k in order} for row in rows]
    return rows


def read_rows(uri: str, split: str, columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
    return table_rows(read_table(uri, split, columns))


def split_uris(uri: str, split: str) -> list[str]:
    """The shard URIs of one split (for Ray Data's read_parquet)."""
    split_uri = storage.join(uri, split)
    return [storage.join(split_uri, p) for p in storage.listdir(split_uri) if p.endswith(".parquet")]


def dataset_stats(uri: str) -> dict[str, Any]:
    """Counts per split and label, and how many rows carry each modality."""
    manifest = read_manifest(uri)
    stats: dict[str, Any] = {"uri": uri, "source": manifest["source"], "task": manifest["task"], "splits": {}}
    modal_cols = ["text", "image", "image_uri", "audio", "vision", "aspect", "spans"]
    for split in SPLITS:
        if split not in manifest["counts"]:
            continue
        table = read_table(uri, split, columns=modal_cols + ["label", "score"])
        n = table.num_rows
        coverage = {}
        for col in modal_cols:
            values = table.column(col)
            present = n - values.null_count
            if col == "text":
                present = sum(1 for t in values.to_pylist() if t)
            coverage[col] = present
        labels = Counter(l for l in table.column("label").to_pylist() if l is not None)
        scores = [s for s in table.column("score").to_pylist() if s is not None]
        entry: dict[str, Any] = {"rows": n, "labels": dict(sorted(labels.items())), "coverage": coverage}
        if scores:
            entry["score"] = {"min": min(scores), "max": max(scores), "mean": sum(scores) / len(scores)}
        stats["splits"][split] = entry
    stats["rejects"] = manifest.get("rejects", 0)
    stats["reject_reasons"] = manifest.get("reject_reasons", {})
    return stats
