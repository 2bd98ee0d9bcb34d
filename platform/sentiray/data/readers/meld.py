"""MELD (emotion recognition in conversation, task ``erc``).

A folder with ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv``,
columns ``Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
Season, Episode, StartTime, EndTime``. The label is the emotion; the sentiment, speaker
and ids go to ``meta``. Row ids are ``meld-<split>-dia<D>_utt<U>`` (the clip names).

Optional features (``cfg.features``): one pickle, either

* ``{split: {"dia<D>_utt<U>": {"audio": T x D, "vision": T x D}}}`` with split one of
  ``train``, ``dev`` (or ``valid``), ``test``; or
* ``{"meld-<split>-dia<D>_utt<U>": {"audio": ..., "vision": ...}}`` keyed by row id.

``video`` is accepted for ``vision``; ``audio_length`` / ``vision_length`` (optional)
keep only the first frames; a 1-D vector (utterance-level features) is one frame.
An utterance without features keeps ``audio`` / ``vision`` None (counted in notes).
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from collections import Counter
from typing import Any

from sentiray.config import DataConfig
from sentiray.data.readers import Folder, RowProblem, decode_text, feature_frames, register
from sentiray.data.schema import EMOTION_LABELS, SPLITS, DataError, PreparedDataset, Reject, canonical_row

SOURCE = "meld"
COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
FEATURE_SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "test": "test"}
MODALITY_KEYS = {"audio": ("audio",), "vision": ("vision", "video")}


@register("meld", task="erc")
def read_meld(cfg: DataConfig) -> PreparedDataset:
    """Read the MELD CSVs (and, when given, a features pickle)."""
    folder = Folder.open(cfg.input)
    missing = [f"{split}_sent_emo.csv" for split in SPLITS if not folder.exists(f"{split}_sent_emo.csv")]
    if missing:
        raise DataError(f"{folder.uri()} is not a MELD folder: missing {', '.join(missing)}")
    features = _load_features(cfg.features) if cfg.features else None

    data = PreparedDataset(source=SOURCE, task="erc", splits={})
    counts: Counter[str] = Counter(text_repaired=0, missing_features=0)
    nonfinite: Counter[str] = Counter({m: 0 for m in MODALITY_KEYS})
    for split in SPLITS:
        name = f"{split}_sent_emo.csv"
        reader = csv.DictReader(io.StringIO(decode_text(folder.read_bytes(name))[0], newline=""))
        absent = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"{folder.uri(name)} lacks the columns {absent} (has {reader.fieldnames})")
        rows, seen = [], set()
        for record in reader:
            row_id = None
            try:
                row_id = _row_id(record, split)
                if row_id in seen:
                    raise RowProblem("duplicate_id", f"{row_id} appears twice in {name}")
                row, repaired = _row(record, row_id)
                if features is not None:
                    found = features.pop(row_id, None)
                    counts["missing_features"] += found is None
                    row.update(_features(found, nonfinite) if found is not None else {})
            except RowProblem as problem:
                data.rejects.append(
                    Reject(split, row_id, SOURCE, problem.reason, raw=json.dumps(record, ensure_ascii=False))
                )
                continue
            seen.add(row_id)
            counts["text_repaired"] += repaired
            rows.append(row)
        data.splits[split] = rows

    data.notes["text_repaired"] = counts["text_repaired"]
    if features is not None:
        data.notes["missing_features"] = counts["missing_features"]
        data.notes["unused_features"] = len(features)  # feature entries that matched no utterance
        data.notes["nonfinite_replaced"] = dict(nonfinite)
    return data


def _row_id(record: dict, split: str) -> str:
    if None in record or any(record.get(c) is None for c in COLUMNS):
        # csv puts surplus fields under the key None and fills missing ones with None.
        raise RowProblem("bad_columns", "wrong number of fields")
    try:
        dialogue, utterance = int(record["Dialogue_ID"]), int(record["Utterance_ID"])
    except ValueError:
        raise RowProblem(
            "bad_id", f"Dialogue_ID {record['Dialogue_ID']!r} / Utterance_ID {record['Utterance_ID']!r}"
        ) from None
    return f"{SOURCE}-{split}-dia{dialogue}_utt{utterance}"


def _row(record: dict, row_id: str) -> tuple[dict, bool]:
    emotion = record["Emotion"].strip().lower()
    if emotion not in EMOTION_LABELS:
        raise RowProblem("bad_label", f"emotion {record['Emotion']!r} is not one of {EMOTION_LABELS}")
    text = repair_text(record["Utterance"]).strip()
    if not text:
        raise RowProblem("empty_text", "empty utterance")
    meta = {
        "sentiment": record["Sentiment"].strip().lower(),
        "speaker": repair_text(record["Speaker"]).strip(),
        "dialogue_id": int(record["Dialogue_ID"]),
        "utterance_id": int(record["Utterance_ID"]),
        "clip": row_id.split("-", 2)[2] + ".mp4",
    }
    for column, key in (
        ("Season", "season"),
        ("Episode", "episode"),
        ("StartTime", "start_time"),
        ("EndTime", "end_time"),
    ):
        if record.get(column):
            meta[key] = record[column].strip()
    row = canonical_row(
        id=row_id, task="erc", text=text, label=emotion, source=SOURCE, meta=json.dumps(meta, ensure_ascii=False)
    )
    return row, text != record["Utterance"].strip()


# --------------------------------------------------------------------------- features


def _load_features(uri: str) -> dict[str, Any]:
    """The features pickle as one dict: row id -> that utterance's features."""
    folder = Folder.open(uri)
    if not folder.exists():
        raise DataError(f"features file {uri} does not exist")
    with folder.stream() as f:
        try:
            blob = pickle.load(f)
        except Exception as exc:
            raise DataError(f"{uri} is not a readable pickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(blob, dict):
        raise DataError(f"{uri}: expected a dict, got {type(blob).__name__}")
    if blob and all(key in FEATURE_SPLITS for key in blob):
        return {
            f"{SOURCE}-{FEATURE_SPLITS[split]}-{utt}": feats
            for split, per_split in blob.items()
            for utt, feats in per_split.items()
        }
    return dict(blob)


def _features(found: Any, nonfinite: Counter) -> dict[str, Any]:
    if not isinstance(found, dict):
        raise RowProblem("bad_features", f"expected a dict with audio / vision, got {type(found).__name__}")
    out: dict[str, Any] = {}
    for modality, keys in MODALITY_KEYS.items():
        key = next((k for k in keys if found.get(k) is not None), None)
        if key is None:
            continue
        length = found.get(f"{key}_length")
        out[modality], bad = feature_frames(found[key], int(length) if length is not None else None)
        nonfinite[modality] += bad
    return out


# --------------------------------------------------------------------------- text repair

# The byte each character stands for when UTF-8 or cp1252 bytes were decoded as cp1252
# or latin-1: cp1252's printable characters (e.g. "’" for 0x92) and latin-1's
# U+0080..U+00FF (which includes the C1 controls such as "\x92").
_BYTE_OF: dict[str, int] = {chr(b): b for b in range(0x80, 0x100)}
for _b in range(0x80, 0xA0):
    try:
        _BYTE_OF[bytes([_b]).decode("cp1252")] = _b
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are undefined in cp1252
        pass


def repair_text(text: str) -> str:
    """Undo the usual encoding damage of MELD's transcripts.

    * UTF-8 read as cp1252/latin-1 ("Iâ€™m", "Iâ\\x80\\x99m") -> "I’m";
    * a lone cp1252 byte read as latin-1 ("I\\x92m") -> "I’m";
    undefined C1 controls left over are dropped. Text without damage comes back unchanged.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        lead = _BYTE_OF.get(text[i])
        need = _continuation_bytes(lead) if lead is not None else 0
        if need:
            tail = [_BYTE_OF.get(c) for c in text[i + 1 : i + 1 + need]]
            if len(tail) == need and all(b is not None and 0x80 <= b <= 0xBF for b in tail):
                try:
                    out.append(bytes([lead, *tail]).decode("utf-8"))
                    i += 1 + need
                    continue
                except UnicodeDecodeError:
                    pass
        out.append(text[i])
        i += 1
    repaired = "".join(out)
    # Lone C1 controls: a cp1252 byte decoded as latin-1.
    return "".join(_c1_to_cp1252(c) if "\x80" <= c <= "\x9f" else c for c in repaired)


def _continuation_bytes(lead: int) -> int:
    """How many continuation bytes a UTF-8 lead byte announces (0: not a lead byte)."""
    if 0xC2 <= lead <= 0xDF:
        return 1
    if 0xE0 <= lead <= 0xEF:
        return 2
    if 0xF0 <= lead <= 0xF4:
        return 3
    return 0


def _c1_to_cp1252(char: str) -> str:
    try:
        return char.encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:
        return ""
