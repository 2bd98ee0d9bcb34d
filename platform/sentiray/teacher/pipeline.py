"""Stage ``rationales``: a teacher writes a reasoning chain for every sample, on Ray Data.

Reads the canonical data set ``data.input`` and writes ``data.output``: the same rows and
columns plus the rationale columns (:data:`RATIONALE_FIELDS`), in the canonical layout
(``URI/<split>/part-*.parquet``, ``URI/rejects/``, ``URI/_manifest.json`` last), so the
next stage reads it with :func:`sentiray.data.schema.read_rows`.

Per row (MulCoT-RD, method.md section 1):

1. pass 1, label-free chain prompt; the label is parsed from the answer by the rule of
   method.md (:func:`~sentiray.teacher.parsing.parse_label`);
2. pass 2, only where pass 1 is wrong or unparseable and the split is in
   ``teacher.rationalize_splits`` (default train: the gold label goes into the prompt, and
   dev/test labels must not shape anything a model later sees); the chain kept is pass 2's.
   When pass 2 fails the row keeps its pass-1 chain, and when pass 2's chain still reads
   another label than gold the row keeps that chain; either way ``rationale_note`` says so
   and ``use_for_training`` is false (unless ``teacher.keep_disagreeing_pass2``): such a
   chain argues for the wrong label;
3. optionally (``teacher.lrsa_rationales``) LRSA's two rationales: a text explanation and
   an image description.

How it runs: the rows still to do stream through one ``map_batches`` over an actor pool
(:class:`TeacherActor`: the backend is built once per actor; an hf model loads once for
the whole run). The driver gathers the answers, joins them to their rows by id and
commits every ``teacher.shard_rows`` rows as one Parquet file, written atomically. A rerun
reads the ids of the committed files and skips them, so each id is written exactly once
and committed shards are never recomputed, whatever killed the last run. Actors that die
are restarted by Ray and their batches retried; an answer that arrives twice is dropped by id.
One run at a time writes an output: it holds ``URI/_lease.json`` (:class:`OutputLease`).

Rows that cannot be processed go to ``URI/rejects/`` with the reason; the run goes on.
Two kinds (:func:`is_teacher_side`):

- content rejects (empty text, unreadable image, unknown label, over-long text, an empty
  answer) are final: a rerun would get the same;
- teacher-side rejects (``teacher error: ...``: 429, 5xx, timeouts, refused connections
  after the retries) are asked again by the next run of the same command. A run that ends
  with any exits with :class:`TeacherRejects` and writes no manifest, unless
  ``teacher.allow_rejects``.

When most of a shard fails with teacher errors the teacher is down rather than the rows
bad: the run stops without committing that shard (``teacher.max_error_fraction``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import socket
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentiray import prompts, tracking
from sentiray.config import ConfigError, JobConfig, TeacherConfig
from sentiray.data import schema, storage
from sentiray.data.images import ImageError
from sentiray.prompts.parsing import parse_label
from sentiray.teacher.backends import (
    TEACHER_ERROR,
    UNREADABLE_IMAGE,
    Request,
    make_backend,
    require_vllm,
    teacher_name,
)

# Columns this stage adds to every row.
RATIONALE_FIELDS: list[pa.Field] = [
    pa.field("rationale", pa.string()),  # the chain kept: pass 1's, or pass 2's when pass 1 was wrong
    pa.field("rationale_pass", pa.int8()),  # 1 or 2
    pa.field("rationale_correct", pa.bool_()),  # the kept chain's parsed label equals the gold label
    pa.field("teacher_prediction", pa.string()),  # the label parsed from pass 1 (null: unparseable)
    pa.field("teacher_correct", pa.bool_()),  # pass-1 prediction == gold label (null: no gold label)
    pa.field("teacher", pa.string()),  # the teacher's name
    pa.field("text_explanation", pa.string()),  # LRSA: explanation of the text (null unless enabled)
    pa.field("image_description", pa.string()),  # LRSA: description of the image (null without image)
    pa.field("rationale_tokens", pa.int32()),  # tokens of the kept chain
    pa.field("teacher_tokens", pa.int32()),  # tokens generated for this row, all passes
    # Why the kept chain is suspect, null when it is not: "pass 2 failed: <error>" (the pass-1
    # chain was kept) or "pass 2 disagrees: ..." (pass 2's chain reads another label than gold).
    pa.field("rationale_note", pa.string()),
    # May training learn this row's chain: false for the rows noted above, unless
    # teacher.keep_disagreeing_pass2. Training filters rows on it.
    pa.field("use_for_training", pa.bool_()),
]
RATIONALE_COLUMNS = tuple(f.name for f in RATIONALE_FIELDS)
OUTPUT_SCHEMA = pa.schema(schema.CANONICAL_FIELDS + RATIONALE_FIELDS)

# What the actors hand back: one row per input row, joined to it by id on the driver.
RESULT_SCHEMA = pa.schema(
    [pa.field("id", pa.string())]
    + RATIONALE_FIELDS
    + [
        pa.field("error", pa.string()),
        pa.field("retries", pa.int32()),
        pa.field("retry_causes", pa.string()),
        pa.field("split", pa.string()),
    ]
)
# The columns the teacher reads (not audio/vision features, not the gold chain).
WORK_COLUMNS = ("id", "task", "text", "aspect", "label", "image", "image_uri")

SUPPORTED_TASKS = ("msc", "masc", "mabsa")
JOB_FILE = "_rationales_job.json"  # the settings that produced the committed shards
LEASE_FILE = "_lease.json"  # held by the one run writing the output
PASS2_FAILED = "pass 2 failed"
PASS2_DISAGREES = "pass 2 disagrees"
# Ray restarts a dead actor (a teacher is only a model host) without limit, and retries the
# batch it held a few times: a batch that kills its actor every time fails the run instead.
ACTOR_TASK_RETRIES = 3
_PART = re.compile(r"^(?:(?P<split>train|dev|test)-)?part-(?P<index>\d+)\.parquet$")


class RationalesIncomplete(RuntimeError):
    """The run stopped before the output was complete; the message says why and what to do.
    The command line prints it as one ``error:`` line and exits 1."""


class TeacherFailing(RationalesIncomplete):
    """Most rows of a shard failed with teacher errors: the teacher is down; resume later."""


class TeacherRejects(RationalesIncomplete):
    """The run ended with rows rejected for teacher-side failures; rerunning retries them."""


class OutputLocked(RationalesIncomplete):
    """Another run is writing the same output."""


def is_teacher_side(reason: str | None) -> bool:
    """A reject the teacher caused (a later run may succeed), not the row's content."""
    return (reason or "").startswith(TEACHER_ERROR)


def teacher_cause(reason: str) -> str:
    """The last failure behind a teacher error, in words a summary can count."""
    last = reason.rsplit("(last: ", 1)[-1]
    if "no answer within" in last:
        return "timeout"
    if "cannot connect" in last:
        return "connection refused"
    code = re.search(r"HTTP (\d{3})", last)
    if code:
        status = int(code.group(1))
        return "HTTP 429" if status == 429 else "HTTP 5xx" if status >= 500 else f"HTTP {status}"
    return "other"


# ----------------------------------------------------------------------------- one batch


@dataclass
class Plan:
    """What to ask the teacher for each row (shipped to the actors as a dict)."""

    teacher: str
    labels: tuple[str, ...] = schema.SENTIMENT_LABELS
    lrsa: bool = False
    lrsa_max_new_tokens: int = 128
    prompts_dir: str | None = None
    keep_disagreeing: bool = False  # teacher.keep_disagreeing_pass2


def _key(row_id: str, kind: str) -> str:
    return f"{row_id}\x1f{kind}"


def row_image(row: dict[str, Any]) -> bytes | None:
    """The row's image bytes (inline or from ``image_uri``), validated; None without an image."""
    from sentiray.data import images

    data = row.get("image")
    if not data and row.get("image_uri"):
        try:
            data = storage.read_bytes(row["image_uri"])
        except FileNotFoundError:
            raise ImageError(f"image {row['image_uri']} does not exist") from None
    if not data:
        return None
    images.decode(data)  # raises ImageError: the row is set aside before any generation
    return data


def _empty_result(row_id: str, teacher: str) -> dict[str, Any]:
    out: dict[str, Any] = {name: None for name in RESULT_SCHEMA.names}
    out.update(id=row_id, teacher=teacher, teacher_tokens=0, retries=0)
    return out


def _add_cost(result: dict[str, Any], answer, causes: Counter) -> None:
    result["teacher_tokens"] += answer.tokens
    result["retries"] += answer.retries
    causes.update(answer.retry_causes)


def _absorb(result: dict[str, Any], answer, causes: Counter) -> bool:
    """Add an answer's cost to the row's result; False (and the row's error set) when it failed."""
    _add_cost(result, answer, causes)
    if answer.error:
        result["error"] = result["error"] or answer.error
        return False
    return True


def teach(backend, rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Both passes (and the LRSA rationales) for a batch of rows; one result per row, in order.

    ``rows`` carry the :data:`WORK_COLUMNS` and ``_rationalize`` (may pass 2 see the gold
    label). Answers are matched to rows by key, never by position.
    """
    results = {r["id"]: _empty_result(r["id"], plan.teacher) for r in rows}
    causes = {r["id"]: Counter() for r in rows}
    image_of: dict[str, bytes | None] = {}
    first: list[Request] = []
    for row in rows:
        rid, res = row["id"], results[row["id"]]
        if not (row.get("text") or "").strip():
            res["error"] = "empty text: the post has no text to reason about"
            continue
        if row.get("label") is not None and row["label"] not in plan.labels:
            res["error"] = f"unknown label: {row['label']!r} is not one of {', '.join(plan.labels)}"
            continue
        try:
            image_of[rid] = row_image(row)
        except ImageError as exc:
            res["error"] = f"{UNREADABLE_IMAGE}: {exc}"
            continue
        first.append(Request(_key(rid, "chain"), prompts.render("chain", row, plan.prompts_dir), image_of[rid]))
        if plan.lrsa:  # LRSA's L_t explains the text alone (no image: cheaper); L_i describes the image
            first.append(
                Request(
                    _key(rid, "explain_text"),
                    prompts.render("explain_text", row, plan.prompts_dir),
                    None,
                    plan.lrsa_max_new_tokens,
                )
            )
            if image_of[rid] is not None:
                first.append(
                    Request(
                        _key(rid, "describe_image"),
                        prompts.render("describe_image", row, plan.prompts_dir),
                        image_of[rid],
                        plan.lrsa_max_new_tokens,
                    )
                )
    answers = {a.key: a for a in backend.answer(first)}

    second: list[Request] = []
    for row in rows:
        rid, res = row["id"], results[row["id"]]
        if rid not in image_of:  # set aside above
            continue
        chain = answers[_key(rid, "chain")]
        if not _absorb(res, chain, causes[rid]):
            continue
        gold = row.get("label")
        predicted = parse_label(chain.text, plan.labels)
        res.update(
            rationale=chain.text,
            rationale_pass=1,
            rationale_tokens=chain.tokens,
            teacher_prediction=predicted,
            teacher_correct=None if gold is None else predicted == gold,
        )
        if plan.lrsa:
            explain = answers[_key(rid, "explain_text")]
            if _absorb(res, explain, causes[rid]):
                res["text_explanation"] = explain.text
            describe = answers.get(_key(rid, "describe_image"))
            if describe is not None and _absorb(res, describe, causes[rid]):
                res["image_description"] = describe.text
        if gold is not None and predicted != gold and row.get("_rationalize"):
            prompt = prompts.render("rationalize", row, plan.prompts_dir, label=gold)
            second.append(Request(_key(rid, "rationalize"), prompt, image_of[rid]))
    for answer in backend.answer(second):
        rid = answer.key.rsplit("\x1f", 1)[0]
        res = results[rid]
        _add_cost(res, answer, causes[rid])
        if answer.error or not (answer.text or "").strip():
            # The row keeps its pass-1 chain (marked): losing a good row to a failed second try would be worse.
            res["rationale_note"] = f"{PASS2_FAILED}: {answer.error or 'empty answer'}"
        else:
            res.update(rationale=answer.text, rationale_pass=2, rationale_tokens=answer.tokens)

    for row in rows:
        res, gold = results[row["id"]], row.get("label")
        if res["rationale"] is not None and not res["rationale"].strip():
            res["error"] = res["error"] or "empty answer: the teacher wrote no chain"
        if res["rationale"] is not None and gold is not None:
            kept = parse_label(res["rationale"], plan.labels)
            res["rationale_correct"] = kept == gold
            if res["rationale_pass"] == 2 and kept != gold:
                res["rationale_note"] = (
                    f"{PASS2_DISAGREES}: its chain reads {kept or 'no label'}, the gold label is {gold}"
                )
        # A noted chain argues for another label than gold: training on it would teach that label.
        res["use_for_training"] = plan.keep_disagreeing or res["rationale_note"] is None
        res["retry_causes"] = json.dumps(dict(causes[row["id"]]))
    return [results[r["id"]] for r in rows]


class TeacherActor:
    """The ``map_batches`` callable: builds the backend once, then answers batch after batch."""

    def __init__(self, settings: dict[str, Any]):
        cfg = TeacherConfig.model_validate(settings["teacher"])  # re-validated on the worker
        self.backend = make_backend(cfg, settings.get("model_path"))
        plan = dict(settings["plan"])
        plan["labels"] = tuple(plan["labels"])
        self.plan = Plan(**plan)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = teach(self.backend, rows, self.plan)
        for row, res in zip(rows, results):  # teach() keeps the order
            res["split"] = row["_split"]
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)


# ----------------------------------------------------------------------------- committed shards


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def _read_ids(uri: str) -> list[str]:
    return _read_table(uri, ["id"]).column("id").to_pylist()


def _read_rejects(uri: str) -> list[tuple[str, str]]:
    t = _read_table(uri, ["id", "reason"])
    return list(zip(t.column("id").to_pylist(), t.column("reason").to_pylist()))


class ShardStore:
    """The committed shards of one split of the output: which ids are done, what comes next.

    Shard ``n`` of split ``s`` is ``OUT/s/part-n.parquet`` (rows) plus, when it has any,
    ``OUT/rejects/s-part-n.parquet`` (rejects), each written whole or not at all
    (:func:`storage.write_bytes`), rejects first. An id is done when a rows file holds it or
    its reject is a content reject. An id whose reject is a teacher error is not done
    (:attr:`retry`): the next run asks again, commits the outcome in a new shard, and only
    then drops the old record from its reject file (rewritten whole, or removed when empty).
    A crash in between leaves two records of one id; opening the store resolves them the
    same way (a row beats a reject, a newer reject an older one), so that a finished output
    shows each id once.
    """

    def __init__(self, output: str, split: str):
        self.output, self.split = output, split
        self.rows_dir = storage.join(output, split)
        self.rejects_dir = storage.join(output, "rejects")
        self.done: set[str] = set()
        self.retry: dict[str, str] = {}  # id -> the reject file holding its teacher error
        self.next_index = 0
        self._remove_stale_temps()
        rows_ids: set[str] = set()
        for name in storage.listdir(self.rows_dir):
            m = _PART.match(name)
            if m and m.group("split") is None:
                self.next_index = max(self.next_index, int(m.group("index")) + 1)
                rows_ids.update(_read_ids(storage.join(self.rows_dir, name)))
        reject_files = []
        for name in storage.listdir(self.rejects_dir):
            m = _PART.match(name)
            if m and m.group("split") == split:
                self.next_index = max(self.next_index, int(m.group("index")) + 1)
                reject_files.append((int(m.group("index")), name))
        self._reject_ids: dict[str, set[str]] = {}  # reject file -> the ids it holds
        newest: dict[str, tuple[str, str]] = {}  # id -> (file, reason) of its newest reject record
        for _, name in sorted(reject_files):
            records = _read_rejects(storage.join(self.rejects_dir, name))
            self._reject_ids[name] = {rid for rid, _ in records}
            newest.update((rid, (name, reason)) for rid, reason in records)
        self.done = set(rows_ids)
        for rid, (name, reason) in newest.items():
            if rid in rows_ids:
                continue
            if is_teacher_side(reason):
                self.retry[rid] = name
            else:
                self.done.add(rid)
        self._drop(
            {
                name: {rid for rid in ids if rid in rows_ids or newest[rid][0] != name}
                for name, ids in self._reject_ids.items()
            }
        )

    def _remove_stale_temps(self) -> None:
        """A killed run may leave ``part-N.parquet.tmp-xxxx`` behind (local disk only)."""
        for folder in (self.rows_dir, self.rejects_dir):
            for name in storage.listdir(folder):
                if ".tmp-" in name:
                    storage.remove(storage.join(folder, name))

    def _drop(self, stale: dict[str, set[str]]) -> None:
        """Remove superseded records from reject files: each file rewritten whole, or removed."""
        for name, ids in stale.items():
            if not ids:
                continue
            uri = storage.join(self.rejects_dir, name)
            table = _read_table(uri)
            kept = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(ids), pa.string()))))
            if kept.num_rows:
                storage.write_bytes(uri, _parquet_bytes(kept))
            else:
                storage.remove(uri)
            self._reject_ids[name] -= ids

    def commit(self, rows: pa.Table, rejects: pa.Table) -> str:
        name = f"part-{self.next_index:05d}.parquet"
        reject_name = f"{self.split}-{name}"
        if rejects.num_rows:
            storage.write_bytes(storage.join(self.rejects_dir, reject_name), _parquet_bytes(rejects))
        storage.write_bytes(storage.join(self.rows_dir, name), _parquet_bytes(rows))
        self.next_index += 1
        # Only now, with the new outcome on disk, are the old teacher errors of these ids superseded.
        superseded: dict[str, set[str]] = {}
        for rid in rows.column("id").to_pylist() + rejects.column("id").to_pylist():
            old = self.retry.pop(rid, None)
            if old is not None:
                superseded.setdefault(old, set()).add(rid)
        self._drop(superseded)
        self.done.update(rows.column("id").to_pylist())
        if rejects.num_rows:
            self._reject_ids[reject_name] = set(rejects.column("id").to_pylist())
        for rid, reason in zip(rejects.column("id").to_pylist(), rejects.column("reason").to_pylist()):
            if is_teacher_side(reason):
                self.retry[rid] = reject_name
            else:
                self.done.add(rid)
        return name


def shard_tables(
    split: str, inputs: pa.Table, position: dict[str, int], results: list[dict[str, Any]]
) -> tuple[pa.Table, pa.Table]:
    """(rows, rejects) of one shard: each result joined to its input row by id."""
    ok = [r for r in results if not r["error"]]
    bad = [r for r in results if r["error"]]
    base = inputs.take(pa.array([position[r["id"]] for r in ok], pa.int64()))
    base = base.drop_columns([c for c in RATIONALE_COLUMNS if c in base.column_names])
    for fld in RATIONALE_FIELDS:
        base = base.append_column(fld, pa.array([r[fld.name] for r in ok], fld.type))
    reject_rows = []
    for r in bad:
        source = inputs.column("source")[position[r["id"]]].as_py()
        text = inputs.column("text")[position[r["id"]]].as_py() or ""
        reject_rows.append({"split": split, "id": r["id"], "source": source, "reason": r["error"], "raw": text[:2000]})
    return base, pa.Table.from_pylist(reject_rows, schema=schema.REJECT_SCHEMA)


# ----------------------------------------------------------------------------- one run at a time


def _process_space() -> str:
    """Where a pid means one process: this host, this boot, this pid namespace (a container)."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(open(path).read().strip() if path.endswith("boot_id") else str(os.stat(path).st_ino))
        except OSError:
            pass
    return "/".join(parts)


def _started_at(pid: int) -> float | None:
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


class OutputLease:
    """An exclusive claim on an output while one run writes it.

    Two runs on one output (a resubmitted job) would both number their next shard from the
    same listing and overwrite each other's files. The lease is ``OUT/_lease.json``, created
    only if absent (local disk: an atomic hard link; S3: a PUT with ``If-None-Match: *``),
    naming its run, host and pid, with a heartbeat rewritten every ``ttl_s / 4`` seconds.
    A second run stops at once (:class:`OutputLocked`, naming the holder) unless the holder
    is abandoned: its process on this host is gone, or its heartbeat is older than ``ttl_s``.
    The holder re-reads the lease after creating it (a server that ignores the condition lets
    the last writer win; the loser sees so) and before every shard it commits.
    """

    def __init__(self, output: str, ttl_s: float):
        self.output = output
        self.uri = storage.join(output, LEASE_FILE)
        self.ttl_s = ttl_s
        self.me = {
            "run": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "space": _process_space(),
            "pid": os.getpid(),
            "pid_started": _started_at(os.getpid()),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "heartbeat": time.time(),
        }
        self.lost: str | None = None  # set by the heartbeat when another run took the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def describe(holder: dict[str, Any] | None) -> str:
        if holder is None:
            return "nobody (the lease file is gone)"
        age = time.time() - float(holder.get("heartbeat") or 0)
        return (
            f"run {holder.get('run')} of pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')}, last heartbeat {age:.0f}s ago"
        )

    def _read(self) -> dict[str, Any] | None:
        try:
            return storage.read_json(self.uri)
        except FileNotFoundError:
            return None

    def _create(self) -> bool:
        """Write our lease only if there is none; False when another run's is there."""
        data = json.dumps(self.me).encode()
        fs, path = storage.filesystem(self.uri)
        try:
            if storage.is_remote(self.uri):
                fs.pipe_file(path, data, mode="create")
            else:  # written whole beside it, then linked: the lease never exists half-written
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as f:
                    f.write(data)
                try:
                    os.link(tmp, path)
                finally:
                    os.remove(tmp)
        except FileExistsError:
            return False
        return True

    def _abandoned(self, holder: dict[str, Any]) -> str | None:
        """Why the holder's run is dead, or None while it may be alive."""
        if holder.get("space") == _process_space():  # the pid means something here
            pid = int(holder.get("pid") or 0)
            if _started_at(pid) != holder.get("pid_started"):
                return f"its process {pid} on {holder.get('host')} is gone"
        age = time.time() - float(holder.get("heartbeat") or 0)
        if age > self.ttl_s:
            return f"no heartbeat for {age:.0f}s (teacher.lease_ttl_s={self.ttl_s:g})"
        return None

    def _locked(self, holder: dict[str, Any] | None) -> OutputLocked:
        return OutputLocked(
            f"rationales: {self.output} is being written by another run ({self.describe(holder)}); two runs at once "
            f"would write the same shards. Wait for it to finish (then rerun, which skips or resumes), or stop it; a "
            f"run that died is detected at once on its own host, elsewhere after teacher.lease_ttl_s={self.ttl_s:g}s "
            f"without a heartbeat"
        )

    def acquire(self) -> None:
        holder = self._read()
        if holder is not None:
            why = self._abandoned(holder)
            if why is None:
                raise self._locked(holder)
            print(
                f"rationales: taking over the output from an abandoned run ({self.describe(holder)}: {why})", flush=True
            )
            storage.remove(self.uri)
        if not self._create():
            raise self._locked(self._read())
        if storage.is_remote(self.uri):
            time.sleep(1.0)  # a server without conditional PUTs: let a racing writer land before we look
        self.check()
        self._thread = threading.Thread(target=self._beat, name="rationales-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise :class:`OutputLocked` unless the lease is still ours."""
        holder = self._read()
        if self.lost or holder is None or holder.get("run") != self.me["run"]:
            raise OutputLocked(
                f"rationales: lost the lease on {self.output} to {self.describe(holder)}; stopped "
                f"before committing more (committed shards are whole)"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                holder = self._read()
                if holder is None or holder.get("run") != self.me["run"]:
                    self.lost = self.describe(holder)
                    return
                self.me["heartbeat"] = time.time()
                storage.write_bytes(self.uri, json.dumps(self.me).encode())
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                print(f"rationales: lease heartbeat failed ({type(exc).__name__}: {exc}); retrying", flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            holder = self._read()
            if holder is not None and holder.get("run") == self.me["run"]:
                storage.remove(self.uri)
        except Exception as exc:  # noqa: BLE001 - never hide the error that ended the run
            print(f"rationales: could not remove the lease {self.uri} ({type(exc).__name__}: {exc})", flush=True)


# ----------------------------------------------------------------------------- progress


class Progress:
    """Rows done / total, rows per second of this run, ETA; printed at most every ``every`` s.

    ``rate`` counts from the start (actors starting, models loading included); ``steady_rate``
    from the first answers on, which is what more rows would cost.
    """

    def __init__(self, total: int, done: int, every: float = 10.0):
        self.total, self.done, self.start_done = total, done, done
        self.start = self.last = time.perf_counter()
        self.every = every
        self.first_at: float | None = None  # when the first answers arrived
        self.first_done = done
        from sentiray import console

        self.bar = console.quiet_progress(total, "rationales", unit="row")
        if self.bar is not None:
            self.bar.update(done)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        if self.first_at is None:
            return 0.0
        elapsed = time.perf_counter() - self.first_at
        return (self.done - self.first_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done}/{self.total} rows ({pct:.0f}%), {rate:.2f} rows/s, ETA {eta}"

    def add(self, n: int, note: str = "", force: bool = False) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if self.done >= self.total:
                self.bar.close()
        now = time.perf_counter()
        if n and self.first_at is None:
            self.first_at, self.first_done = now, self.done
        if force or now - self.last >= self.every:
            self.last = now
            print(f"rationales: {self.line()}{note}", flush=True)


# ----------------------------------------------------------------------------- the stage


def _check_job(cfg: JobConfig) -> tuple[str, str, str]:
    """(input URI, output URI, task), or a ConfigError / DataError naming what is wrong."""
    data = cfg.data
    if data.format != "canonical":
        raise ConfigError(
            f"rationales: data.format must be 'canonical' (the stage reads a data set prepared by `sentiray data "
            f"prepare`, named by data.input), got {data.format!r}"
        )
    input_uri, output = cfg.resolve(data.input), cfg.resolve(data.output)
    if input_uri.rstrip("/") == output.rstrip("/"):
        raise ConfigError(f"rationales: data.output must differ from data.input ({input_uri})")
    manifest = schema.read_manifest(input_uri)
    task = manifest.get("task")
    if task not in SUPPORTED_TASKS:
        raise ConfigError(
            f"rationales: {input_uri} is a {task!r} data set; the MulCoT prompts classify positive/neutral/negative "
            f"sentiment of posts or aspects: supported tasks are {', '.join(SUPPORTED_TASKS)}"
        )
    return input_uri, output, task


def _model_location(cfg: JobConfig) -> str | None:
    """The teacher model's path for the workers: relative names under storage.root, absolute."""
    t = cfg.teacher
    if t.backend == "openai":
        return None
    from sentiray.models.loading import ModelNotFoundError, resolve_model_path

    path = cfg.resolve(t.model.path)
    if not storage.is_remote(path):
        path = os.path.abspath(path)
    try:
        if storage.is_remote(path):
            if not storage.exists(storage.join(path, "config.json")):
                raise ModelNotFoundError(f"no model at {path}: no config.json under that prefix")
        else:
            resolve_model_path(path)
    except ModelNotFoundError as exc:
        raise ConfigError(f"teacher.model.path: {exc}") from None
    return path


def _templates_digest(task: str, prompts_dir: str | None) -> str:
    text = "\n".join(prompts.template(k, task, prompts_dir) for k in prompts.KINDS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _job_record(cfg: JobConfig, input_uri: str, task: str, name: str) -> dict[str, Any]:
    """What determines the committed rows: a rerun must match it to resume into the same output."""
    t = cfg.teacher
    return {
        "input": input_uri,
        "teacher": name,
        "backend": t.backend,
        "model": t.model.path if t.model else t.endpoint_model,
        "max_new_tokens": t.max_new_tokens,
        "temperature": t.temperature,
        "seed": t.seed,
        "prompts": _templates_digest(task, t.prompts_dir),
        "lrsa_rationales": t.lrsa_rationales,
        "lrsa_max_new_tokens": t.lrsa_max_new_tokens,
        "splits": sorted(t.splits),
        "rationalize_splits": sorted(t.rationalize_splits),
        "keep_disagreeing_pass2": t.keep_disagreeing_pass2,  # decides use_for_training of committed rows
    }


def _check_resume(output: str, record: dict[str, Any]) -> None:
    path = storage.join(output, JOB_FILE)
    if storage.exists(path):
        before = storage.read_json(path)
        changed = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
        if changed:
            diffs = "; ".join(f"{k}: {before.get(k)!r} -> {record.get(k)!r}" for k in changed)
            raise ConfigError(
                f"rationales: {output} holds shards written with other settings ({diffs}). Resuming would mix "
                "them: set data.overwrite=true to start over, or choose another data.output"
            )
    else:
        storage.write_json(path, record)


def _actor_options(t: TeacherConfig) -> dict[str, Any]:
    from ray.data import ActorPoolStrategy

    # Spelled out, not left to Ray Data's defaults: a killed actor comes back (its model
    # reloaded) and the batches it held run again; their answers are deduplicated by id.
    opts: dict[str, Any] = {"num_cpus": t.num_cpus, "max_restarts": -1, "max_task_retries": ACTOR_TASK_RETRIES}
    if t.num_gpus:
        opts["num_gpus"] = t.num_gpus
    if t.backend == "openai":
        # One actor; its thread pool is the bound on requests in flight. Two batches at a
        # time, so that one batch's slowest requests do not leave the pool idle.
        opts["compute"] = ActorPoolStrategy(size=1, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
        key = os.environ.get(t.api_key_env)
        if key:  # the actor reads it from its environment (a remote node does not share ours)
            opts["runtime_env"] = {"env_vars": {t.api_key_env: key}}
    else:
        opts["compute"] = ActorPoolStrategy(size=t.concurrency)
    return opts


@dataclass
class SplitWork:
    """One split's rows still to do, and where its shards go."""

    split: str
    todo: pa.Table  # the input rows not yet committed
    position: dict[str, int]  # id -> row of ``todo`` (the join key)
    store: ShardStore
    pending: list[dict[str, Any]] = field(default_factory=list)  # answered, not yet committed
    seen: set[str] = field(default_factory=set)  # ids answered in this run


def _load_split(split: str, input_uri: str, output: str) -> SplitWork | None:
    table = schema.read_table(input_uri, split)
    if table.num_rows == 0:
        return None
    missing = [c for c in WORK_COLUMNS + ("source",) if c not in table.column_names]
    if missing:
        raise schema.DataError(f"{input_uri}/{split} lacks the canonical column(s) {missing}")
    ids = table.column("id").to_pylist()
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise schema.DataError(f"{input_uri}/{split}: ids must be unique, {len(dupes)} repeat (e.g. {dupes[:3]})")
    store = ShardStore(output, split)
    todo = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(store.done), pa.string()))))
    retry = f" ({len(store.retry)} of them teacher errors of an earlier run, asked again)" if store.retry else ""
    print(
        f"rationales: {split}: {todo.num_rows} rows to do{retry}, {table.num_rows - todo.num_rows} already "
        f"committed in {store.next_index} shards",
        flush=True,
    )
    position = {rid: i for i, rid in enumerate(todo.column("id").to_pylist())}
    return SplitWork(split, todo, position, store)


def _process(
    works: list[SplitWork],
    settings: dict[str, Any],
    t: TeacherConfig,
    progress: Progress,
    counters: Counter,
    lease: OutputLease,
) -> None:
    """Stream every split's remaining rows through one actor pool (the model loads once) and
    commit each split's answers shard by shard."""
    import ray

    parts = []
    for w in works:
        work = w.todo.select(list(WORK_COLUMNS))
        n = work.num_rows
        work = work.append_column("_rationalize", pa.array([w.split in t.rationalize_splits] * n, pa.bool_()))
        parts.append(work.append_column("_split", pa.array([w.split] * n, pa.string())))
    if not parts or sum(p.num_rows for p in parts) == 0:
        return
    work = pa.concat_tables(parts)
    by_split = {w.split: w for w in works}
    # One block per batch: the blocks spread over the actors and stream back as they finish.
    blocks = [work.slice(i, t.batch_size) for i in range(0, work.num_rows, t.batch_size)]
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts / max_task_retries only as the deprecated free remote args.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ray.data.from_arrow(blocks).map_batches(
            TeacherActor,
            fn_constructor_kwargs={"settings": settings},
            batch_size=t.batch_size,
            batch_format="pyarrow",
            **_actor_options(t),
        )
    # Results in input order, whatever the number of actors: the same rows give the same shards,
    # and so the same training order downstream (in completion order, two actors gave a demo
    # student test accuracies from 0.60 to 0.87 run to run).
    ds.context.execution_options.preserve_order = True

    def commit(w: SplitWork, results: list[dict[str, Any]]) -> None:
        failing = [r for r in results if (r["error"] or "").startswith("teacher error")]
        if len(failing) > t.max_error_fraction * len(results):
            raise TeacherFailing(
                f"{len(failing)}/{len(results)} rows of the next {w.split} shard failed with teacher errors (last: "
                f"{failing[-1]['error']}); nothing of it was committed. Rerun once the teacher is back: finished "
                f"shards are kept."
            )
        rows, rejects = shard_tables(w.split, w.todo, w.position, results)
        lease.check()  # never write a shard once another run owns the output
        name = w.store.commit(rows, rejects)
        counters["rows"] += rows.num_rows
        counters["rejects"] += rejects.num_rows
        counters["rejects_teacher"] += sum(is_teacher_side(r) for r in rejects.column("reason").to_pylist())
        counters["shards"] += 1
        progress.add(0, f" | {w.split}/{name} committed ({rows.num_rows} rows, {rejects.num_rows} rejects)", force=True)
        tracking.log_metrics({"rows_done": progress.done, "rows_per_s": progress.rate}, step=progress.done)

    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        fresh = 0
        for result in batch.to_pylist():
            w = by_split[result["split"]]
            if result["id"] in w.store.done or result["id"] in w.seen:
                continue  # never twice, even if a task ran twice
            w.seen.add(result["id"])
            w.pending.append(result)
            fresh += 1
            counters["tokens"] += result["teacher_tokens"] or 0
            counters["retries"] += result["retries"] or 0
            for cause, n in json.loads(result["retry_causes"] or "{}").items():
                counters[f"retries_{cause}"] += n
        for w in works:
            while len(w.pending) >= t.shard_rows:
                commit(w, w.pending[: t.shard_rows])
                w.pending = w.pending[t.shard_rows :]
        progress.add(fresh)
    for w in works:
        if w.pending:
            commit(w, w.pending)
            w.pending = []


def _reject_files(output: str) -> list[str]:
    folder = storage.join(output, "rejects")
    return [storage.join(folder, n) for n in storage.listdir(folder) if n.endswith(".parquet")]


def _read_output(output: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """A split of the (maybe not yet complete) output; empty when it has no shard."""
    if not any(n.endswith(".parquet") for n in storage.listdir(storage.join(output, split))):
        return OUTPUT_SCHEMA.empty_table().select(columns) if columns else OUTPUT_SCHEMA.empty_table()
    return schema.read_table(output, split, columns)


def output_counts(output: str, splits: Iterable[str]) -> dict[str, Any]:
    """What the whole output holds (every run that wrote to it): rows per split and label,
    rejects by kind and reason, and the chains noted after pass 2."""
    counts, label_counts = {}, {}
    notes: Counter = Counter()
    excluded = 0
    for split in splits:
        table = _read_output(output, split, ["label", "rationale_note", "use_for_training"])
        labels = table.column("label").to_pylist()
        counts[split] = len(labels)
        label_counts[split] = dict(Counter(l for l in labels if l is not None))
        notes.update((n or "").split(":")[0] for n in table.column("rationale_note").to_pylist())
        excluded += sum(u is False for u in table.column("use_for_training").to_pylist())
    reasons = []
    if _reject_files(output):
        reasons = schema.read_table(output, "rejects", columns=["reason"]).column("reason").to_pylist()
    teacher_side = [r for r in reasons if is_teacher_side(r)]
    return {
        "counts": counts,
        "label_counts": label_counts,
        "rejects": len(reasons),
        "rejects_content": len(reasons) - len(teacher_side),
        "rejects_teacher": len(teacher_side),
        "reject_reasons": dict(Counter(r.split(":")[0] for r in reasons)),
        "teacher_reject_causes": dict(Counter(teacher_cause(r) for r in teacher_side)),
        "pass2_failed": notes[PASS2_FAILED],
        "pass2_disagreeing": notes[PASS2_DISAGREES],
        "excluded_from_training": excluded,
    }


def _write_manifest(
    output: str, input_manifest: dict[str, Any], found: dict[str, Any], notes: dict[str, Any]
) -> dict[str, Any]:
    if not _reject_files(output):  # the canonical layout always has a rejects split, maybe empty
        storage.write_bytes(
            storage.join(output, "rejects", "part-00000.parquet"), _parquet_bytes(schema.REJECT_SCHEMA.empty_table())
        )
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "source": input_manifest.get("source"),
        "task": input_manifest.get("task"),
        **found,
        "notes": notes,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    storage.write_json(storage.join(output, "_manifest.json"), manifest)
    return manifest


def quality(output: str, splits: Iterable[str]) -> dict[str, float]:
    """Teacher metrics over the whole output (every run that wrote to it)."""
    cols = ["teacher_prediction", "teacher_correct", "rationale_pass", "rationale_correct", "teacher_tokens"]
    out: dict[str, float] = {}
    total = {"rows": 0, "unparsed": 0, "judged": 0, "correct": 0, "tokens": 0}
    for split in splits:
        table = _read_output(output, split, cols)
        if table.num_rows == 0:
            continue
        t = table.to_pydict()
        judged = [c for c in t["teacher_correct"] if c is not None]
        unparsed = sum(p is None for p in t["teacher_prediction"])
        if judged:
            out[f"pass1_accuracy_{split}"] = sum(judged) / len(judged)
        out[f"pass2_share_{split}"] = sum(p == 2 for p in t["rationale_pass"]) / table.num_rows
        kept = [c for c in t["rationale_correct"] if c is not None]
        if kept:
            out[f"rationale_label_agreement_{split}"] = sum(kept) / len(kept)
        total["rows"] += table.num_rows
        total["unparsed"] += unparsed
        total["judged"] += len(judged)
        total["correct"] += sum(judged)
        total["tokens"] += sum(x or 0 for x in t["teacher_tokens"])
    if total["judged"]:
        out["pass1_accuracy"] = total["correct"] / total["judged"]
    if total["rows"]:
        out["parse_failure_rate"] = total["unparsed"] / total["rows"]
    out["tokens_generated_total"] = total["tokens"]
    return out


def sample_markdown(output: str, split: str = "train", n: int = 20) -> str:
    """A readable sample of chains, for MLflow."""
    table = _read_output(output, split)
    if table.num_rows == 0:
        return f"(no {split} rows)\n"
    rows = sorted(
        table.drop_columns([c for c in ("image", "audio", "vision") if c in table.column_names]).to_pylist(),
        key=lambda r: r["id"],
    )[:n]
    parts = [f"# Sample of teacher chains ({split}, {len(rows)} of {table.num_rows})\n"]
    for r in rows:
        parts.append(
            f"## {r['id']}\n\n- text: {r['text']}\n- aspect: {r.get('aspect')}\n- gold: {r.get('label')} | "
            f"pass-1 prediction: {r['teacher_prediction']} | kept chain from pass {r['rationale_pass']} | "
            f"teacher: {r['teacher']}\n\n```\n{r['rationale']}\n```\n"
        )
        if r.get("text_explanation") is not None:
            parts.append(
                f"- text explanation: {r['text_explanation']}\n- image description: {r['image_description']}\n"
            )
    return "\n".join(parts)


def _skipped(output: str) -> dict[str, Any]:
    manifest = schema.read_manifest(output)
    kept = manifest.get("rejects_teacher", 0)
    accepted = (
        (
            f"; its {kept} teacher-side rejects were accepted (teacher.allow_rejects): delete "
            f"{storage.join(output, '_manifest.json')} and rerun to ask again for just those"
        )
        if kept
        else ""
    )
    print(
        f"rationales: {output} is complete ({manifest['counts']}); skipped (set data.overwrite=true to redo){accepted}",
        flush=True,
    )
    return {"output": output, "skipped": True, "manifest": manifest}


def _rejects_summary(output: str, found: dict[str, Any], t: TeacherConfig) -> str:
    """The one paragraph a run that ends with teacher-side rejects fails with."""
    n, total = found["rejects_teacher"], sum(found["counts"].values()) + found["rejects"]
    causes = ", ".join(f"{k}: {v}" for k, v in sorted(found["teacher_reject_causes"].items(), key=lambda kv: -kv[1]))
    retries = f" (teacher.max_retries={t.max_retries})" if t.backend == "openai" else ""
    return (
        f"rationales: {n} of {total} rows are rejected for teacher-side failures after the retries{retries}: "
        f"{causes}. {output} is not marked complete (no _manifest.json), so `sentiray pipeline` does not skip it. "
        f"Rerun the same command once the teacher is healthy: it asks again for just these {n} rows and keeps the "
        f"{sum(found['counts'].values())} committed rows and {found['rejects_content']} content rejects. "
        f"To finish with them rejected, set teacher.allow_rejects=true."
    )


def _clear_output(output: str) -> None:
    """data.overwrite: everything goes but our lease, the manifest first (a crash leaves it incomplete)."""
    storage.remove(storage.join(output, "_manifest.json"))
    for name in storage.listdir(output):
        if name != LEASE_FILE:
            storage.remove(storage.join(output, name), recursive=True)


def run(cfg: JobConfig) -> dict[str, Any]:
    """Write rationales for ``data.input`` into ``data.output``; resumes an interrupted output.

    Raises :class:`TeacherRejects` when rows are left rejected for teacher-side failures
    (unless ``teacher.allow_rejects``), :class:`OutputLocked` when another run writes the output.
    """
    t = cfg.teacher
    input_uri, output, task = _check_job(cfg)
    if t.backend == "vllm":
        require_vllm()
    if schema.is_complete(output) and not cfg.data.overwrite:
        return _skipped(output)
    model_path = _model_location(cfg)
    lease = OutputLease(output, t.lease_ttl_s)
    lease.acquire()
    try:
        if schema.is_complete(output) and not cfg.data.overwrite:  # another run finished it meanwhile
            return _skipped(output)
        if cfg.data.overwrite:
            _clear_output(output)
        return _run_leased(cfg, lease, input_uri, output, task, model_path)
    finally:
        lease.release()


def _run_leased(
    cfg: JobConfig, lease: OutputLease, input_uri: str, output: str, task: str, model_path: str | None
) -> dict[str, Any]:
    t = cfg.teacher
    name = teacher_name(t)
    input_manifest = schema.read_manifest(input_uri)
    _check_resume(output, _job_record(cfg, input_uri, task, name))
    if t.backend == "openai" and not os.environ.get(t.api_key_env):
        print(f"rationales: no API key in ${t.api_key_env}; sending requests without one", flush=True)

    plan = Plan(
        teacher=name,
        labels=schema.labels_for(task),
        lrsa=t.lrsa_rationales,
        lrsa_max_new_tokens=t.lrsa_max_new_tokens,
        prompts_dir=t.prompts_dir,
        keep_disagreeing=t.keep_disagreeing_pass2,
    )
    settings = {"teacher": t.model_dump(mode="json"), "model_path": model_path, "plan": asdict(plan)}
    splits = [s for s in schema.SPLITS if s in t.splits]

    with tracking.stage_run(cfg, "rationales"):
        from sentiray.runtime import ensure_ray

        ensure_ray(cfg.ray)
        total = sum(input_manifest.get("counts", {}).get(s, 0) for s in splits)
        print(
            f"rationales: teacher {name} ({t.backend}); {input_uri} -> {output}; {total} rows in {splits}", flush=True
        )
        works = [w for w in (_load_split(s, input_uri, output) for s in splits) if w is not None]
        already = total - sum(w.todo.num_rows for w in works)
        progress = Progress(total, already)
        counters: Counter = Counter()
        retried = sum(len(w.store.retry) for w in works)
        _process(works, settings, t, progress, counters, lease)
        elapsed = time.perf_counter() - progress.start
        run_metrics = {
            "rows_processed": counters["rows"] + counters["rejects"],
            "rows_skipped": already,
            "rows_retried": retried,  # teacher-side rejects of earlier runs, asked again
            "rows_per_s": (counters["rows"] + counters["rejects"]) / elapsed if elapsed > 0 else 0.0,
            "rows_per_s_steady": progress.steady_rate,
            "rejects_this_run": counters["rejects"],
            "rejects_teacher_this_run": counters["rejects_teacher"],
            "shards_committed": counters["shards"],
            "tokens_generated": counters["tokens"],
            "retries": counters["retries"],
            **{k: v for k, v in counters.items() if k.startswith("retries_")},
        }
        teacher_quality = quality(output, splits)
        found = output_counts(output, splits)
        metrics = {
            **teacher_quality,
            **run_metrics,
            **{
                k: found[k]
                for k in (
                    "rejects",
                    "rejects_content",
                    "rejects_teacher",
                    "pass2_failed",
                    "pass2_disagreeing",
                    "excluded_from_training",
                )
            },
        }
        if found["rejects_teacher"] and not t.allow_rejects:
            tracking.log_metrics(metrics)
            raise TeacherRejects(_rejects_summary(output, found, t))
        notes = {
            "stage": "rationales",
            "input": input_uri,
            "teacher": name,
            "backend": t.backend,
            "rationale_columns": list(RATIONALE_COLUMNS),
            "rationalize_splits": list(t.rationalize_splits),
            "lrsa_rationales": t.lrsa_rationales,
            "keep_disagreeing_pass2": t.keep_disagreeing_pass2,
            "quality": teacher_quality,
        }
        manifest = _write_manifest(output, input_manifest, found, notes)
        tracking.log_metrics(metrics)
        tracking.log_json(manifest, "rationales/manifest.json")
        tracking.log_text(sample_markdown(output, splits[0]), "rationales/sample_chains.md")
    print(
        f"rationales: wrote {output}: {manifest['counts']}, {manifest['rejects']} rejects"
        f"{' ' + json.dumps(manifest['reject_reasons']) if manifest['rejects'] else ''}; "
        f"{run_metrics['rows_processed']} rows this run at {run_metrics['rows_per_s']:.2f} rows/s, "
        f"{run_metrics['retries']} retries",
        flush=True,
    )
    if found["rejects_teacher"]:
        print(
            f"rationales: {found['rejects_teacher']} teacher-side rejects accepted (teacher.allow_rejects): "
            f"{found['teacher_reject_causes']}",
            flush=True,
        )
    if found["pass2_failed"] or found["pass2_disagreeing"]:
        kept = (
            "kept for training (teacher.keep_disagreeing_pass2)"
            if t.keep_disagreeing_pass2
            else "use_for_training=false"
        )
        print(
            f"rationales: {found['pass2_failed']} rows kept their pass-1 chain after pass 2 failed, "
            f"{found['pass2_disagreeing']} pass-2 chains disagree with the gold label: {kept}",
            flush=True,
        )
    if "pass1_accuracy" in metrics:
        print(
            f"rationales: pass-1 teacher accuracy {metrics['pass1_accuracy']:.3f}, parse failures "
            f"{metrics.get('parse_failure_rate', 0):.3f}",
            flush=True,
        )
    return {"output": output, "skipped": False, "manifest": manifest, "metrics": metrics}
