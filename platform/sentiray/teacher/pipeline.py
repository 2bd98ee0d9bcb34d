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
   dev/test labels must not shape anything a model later sees); the chain kept is pass 2's;
3. optionally (``teacher.lrsa_rationales``) LRSA's two rationales: a text explanation and
   an image description.

How it runs: the rows still to do stream through one ``map_batches`` over an actor pool
(:class:`TeacherActor`: the backend is built once per actor; an hf model loads once for
the whole run). The driver gathers the answers, joins them to their rows by id and
commits every ``teacher.shard_rows`` rows as one Parquet file, written atomically. A rerun
reads the ids of the committed files and skips them, so each id is written exactly once
and committed shards are never recomputed, whatever killed the last run.

Rows that cannot be processed (empty text, unreadable image, unknown label, teacher error
after retries) go to ``URI/rejects/`` with the reason; the run goes on. When most of a
shard fails with teacher errors the teacher is down rather than the rows bad: the run
stops without committing that shard (``teacher.max_error_fraction``), to resume later.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sentiray import tracking
from sentiray.config import ConfigError, JobConfig, TeacherConfig
from sentiray.data import schema, storage
from sentiray.data.images import ImageError
from sentiray import prompts
from sentiray.teacher.backends import (
    UNREADABLE_IMAGE,
    Request,
    make_backend,
    require_vllm,
    teacher_name,
)
from sentiray.prompts.parsing import parse_label

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
]
RATIONALE_COLUMNS = tuple(f.name for f in RATIONALE_FIELDS)
OUTPUT_SCHEMA = pa.schema(schema.CANONICAL_FIELDS + RATIONALE_FIELDS)

# What the actors hand back: one row per input row, joined to it by id on the driver.
RESULT_SCHEMA = pa.schema(
    [pa.field("id", pa.string())]
    + RATIONALE_FIELDS
    + [pa.field("error", pa.string()), pa.field("retries", pa.int32()), pa.field("retry_causes", pa.string()),
       pa.field("split", pa.string())]
)
# The columns the teacher reads (not audio/vision features, not the gold chain).
WORK_COLUMNS = ("id", "task", "text", "aspect", "label", "image", "image_uri")

SUPPORTED_TASKS = ("msc", "masc", "mabsa")
JOB_FILE = "_rationales_job.json"  # the settings that produced the committed shards
_PART = re.compile(r"^(?:(?P<split>train|dev|test)-)?part-(?P<index>\d+)\.parquet$")


class TeacherFailing(RuntimeError):
    """Most rows of a shard failed with teacher errors: the teacher is down; resume later."""


# ----------------------------------------------------------------------------- one batch


@dataclass
class Plan:
    """What to ask the teacher for each row (shipped to the actors as a dict)."""

    teacher: str
    labels: tuple[str, ...] = schema.SENTIMENT_LABELS
    lrsa: bool = False
    lrsa_max_new_tokens: int = 128
    prompts_dir: str | None = None


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


def _absorb(result: dict[str, Any], answer, causes: Counter) -> bool:
    """Add an answer's cost to the row's result; False (and the row's error set) when it failed."""
    result["teacher_tokens"] += answer.tokens
    result["retries"] += answer.retries
    causes.update(answer.retry_causes)
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
            first.append(Request(_key(rid, "explain_text"), prompts.render("explain_text", row, plan.prompts_dir),
                                 None, plan.lrsa_max_new_tokens))
            if image_of[rid] is not None:
                first.append(Request(_key(rid, "describe_image"), prompts.render("describe_image", row, plan.prompts_dir),
                                     image_of[rid], plan.lrsa_max_new_tokens))
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
        res.update(rationale=chain.text, rationale_pass=1, rationale_tokens=chain.tokens, teacher_prediction=predicted,
                   teacher_correct=None if gold is None else predicted == gold)
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
        if _absorb(results[rid], answer, causes[rid]):
            results[rid].update(rationale=answer.text, rationale_pass=2, rationale_tokens=answer.tokens)

    for row in rows:
        res = results[row["id"]]
        if res["rationale"] is not None and not res["rationale"].strip():
            res["error"] = res["error"] or "empty answer: the teacher wrote no chain"
        if res["rationale"] is not None and row.get("label") is not None:
            res["rationale_correct"] = parse_label(res["rationale"], plan.labels) == row["label"]
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


def _read_ids(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=["id"]).column("id").to_pylist()


class ShardStore:
    """The committed shards of one split of the output: which ids are done, what comes next.

    Shard ``n`` of split ``s`` is ``OUT/s/part-n.parquet`` (rows) plus, when it has any,
    ``OUT/rejects/s-part-n.parquet`` (rejects). Each file is written whole or not at all
    (:func:`storage.write_bytes`); the done ids are the union of both, so a crash between
    the two writes only means the other file's ids are redone into a new shard.
    """

    def __init__(self, output: str, split: str):
        self.output, self.split = output, split
        self.rows_dir = storage.join(output, split)
        self.rejects_dir = storage.join(output, "rejects")
        self.done: set[str] = set()
        self.next_index = 0
        self._remove_stale_temps()
        for folder, prefix in ((self.rows_dir, None), (self.rejects_dir, split)):
            for name in storage.listdir(folder):
                m = _PART.match(name)
                if not m or m.group("split") != prefix:
                    continue
                self.next_index = max(self.next_index, int(m.group("index")) + 1)
                self.done.update(_read_ids(storage.join(folder, name)))

    def _remove_stale_temps(self) -> None:
        """A killed run may leave ``part-N.parquet.tmp-xxxx`` behind (local disk only)."""
        for folder in (self.rows_dir, self.rejects_dir):
            for name in storage.listdir(folder):
                if ".tmp-" in name:
                    storage.remove(storage.join(folder, name))

    def commit(self, rows: pa.Table, rejects: pa.Table) -> str:
        name = f"part-{self.next_index:05d}.parquet"
        if rejects.num_rows:
            storage.write_bytes(storage.join(self.rejects_dir, f"{self.split}-{name}"), _parquet_bytes(rejects))
        storage.write_bytes(storage.join(self.rows_dir, name), _parquet_bytes(rows))
        self.next_index += 1
        self.done.update(rows.column("id").to_pylist())
        self.done.update(rejects.column("id").to_pylist())
        return name


def shard_tables(split: str, inputs: pa.Table, position: dict[str, int],
                 results: list[dict[str, Any]]) -> tuple[pa.Table, pa.Table]:
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
        "input": input_uri, "teacher": name, "backend": t.backend,
        "model": t.model.path if t.model else t.endpoint_model, "max_new_tokens": t.max_new_tokens,
        "temperature": t.temperature, "seed": t.seed, "prompts": _templates_digest(task, t.prompts_dir),
        "lrsa_rationales": t.lrsa_rationales, "lrsa_max_new_tokens": t.lrsa_max_new_tokens,
        "splits": sorted(t.splits), "rationalize_splits": sorted(t.rationalize_splits),
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

    opts: dict[str, Any] = {"num_cpus": t.num_cpus}
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
    print(f"rationales: {split}: {todo.num_rows} rows to do, {table.num_rows - todo.num_rows} already committed "
          f"in {store.next_index} shards", flush=True)
    position = {rid: i for i, rid in enumerate(todo.column("id").to_pylist())}
    return SplitWork(split, todo, position, store)


def _process(works: list[SplitWork], settings: dict[str, Any], t: TeacherConfig, progress: Progress,
             counters: Counter) -> None:
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
    ds = ray.data.from_arrow(blocks).map_batches(
        TeacherActor, fn_constructor_kwargs={"settings": settings}, batch_size=t.batch_size, batch_format="pyarrow",
        **_actor_options(t),
    )

    def commit(w: SplitWork, results: list[dict[str, Any]]) -> None:
        failing = [r for r in results if (r["error"] or "").startswith("teacher error")]
        if len(failing) > t.max_error_fraction * len(results):
            raise TeacherFailing(
                f"{len(failing)}/{len(results)} rows of the next {w.split} shard failed with teacher errors (last: "
                f"{failing[-1]['error']}); nothing of it was committed. Rerun once the teacher is back: finished "
                f"shards are kept."
            )
        rows, rejects = shard_tables(w.split, w.todo, w.position, results)
        name = w.store.commit(rows, rejects)
        counters["rows"] += rows.num_rows
        counters["rejects"] += rejects.num_rows
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


def _write_manifest(output: str, input_manifest: dict[str, Any], splits: Iterable[str],
                    notes: dict[str, Any]) -> dict[str, Any]:
    counts, label_counts = {}, {}
    for split in splits:
        labels = _read_output(output, split, ["label"]).column("label").to_pylist()
        counts[split] = len(labels)
        label_counts[split] = dict(Counter(l for l in labels if l is not None))
    if not _reject_files(output):  # the canonical layout always has a rejects split, maybe empty
        storage.write_bytes(storage.join(output, "rejects", "part-00000.parquet"),
                            _parquet_bytes(schema.REJECT_SCHEMA.empty_table()))
    reasons = schema.read_table(output, "rejects", columns=["reason"]).column("reason").to_pylist()
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "source": input_manifest.get("source"),
        "task": input_manifest.get("task"),
        "counts": counts,
        "label_counts": label_counts,
        "rejects": len(reasons),
        "reject_reasons": dict(Counter(r.split(":")[0] for r in reasons)),
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
    rows = sorted(table.drop_columns([c for c in ("image", "audio", "vision") if c in table.column_names]).to_pylist(),
                  key=lambda r: r["id"])[:n]
    parts = [f"# Sample of teacher chains ({split}, {len(rows)} of {table.num_rows})\n"]
    for r in rows:
        parts.append(f"## {r['id']}\n\n- text: {r['text']}\n- aspect: {r.get('aspect')}\n- gold: {r.get('label')} | "
                     f"pass-1 prediction: {r['teacher_prediction']} | kept chain from pass {r['rationale_pass']} | "
                     f"teacher: {r['teacher']}\n\n```\n{r['rationale']}\n```\n")
        if r.get("text_explanation") is not None:
            parts.append(f"- text explanation: {r['text_explanation']}\n- image description: {r['image_description']}\n")
    return "\n".join(parts)


def run(cfg: JobConfig) -> dict[str, Any]:
    """Write rationales for ``data.input`` into ``data.output``; resumes an interrupted output."""
    t = cfg.teacher
    input_uri, output, task = _check_job(cfg)
    if t.backend == "vllm":
        require_vllm()
    if schema.is_complete(output) and not cfg.data.overwrite:
        manifest = schema.read_manifest(output)
        print(f"rationales: {output} is complete ({manifest['counts']}); skipped (set data.overwrite=true to redo)")
        return {"output": output, "skipped": True, "manifest": manifest}
    if cfg.data.overwrite:
        storage.remove(storage.join(output, "_manifest.json"))  # first: a crash now leaves it incomplete
        storage.remove(output, recursive=True)
    model_path = _model_location(cfg)
    name = teacher_name(t)
    input_manifest = schema.read_manifest(input_uri)
    _check_resume(output, _job_record(cfg, input_uri, task, name))
    if t.backend == "openai" and not os.environ.get(t.api_key_env):
        print(f"rationales: no API key in ${t.api_key_env}; sending requests without one", flush=True)

    plan = Plan(teacher=name, labels=schema.labels_for(task), lrsa=t.lrsa_rationales,
                lrsa_max_new_tokens=t.lrsa_max_new_tokens, prompts_dir=t.prompts_dir)
    settings = {"teacher": t.model_dump(mode="json"), "model_path": model_path, "plan": asdict(plan)}
    splits = [s for s in schema.SPLITS if s in t.splits]

    with tracking.stage_run(cfg, "rationales"):
        from sentiray.runtime import ensure_ray

        ensure_ray(cfg.ray)
        total = sum(input_manifest.get("counts", {}).get(s, 0) for s in splits)
        print(f"rationales: teacher {name} ({t.backend}); {input_uri} -> {output}; {total} rows in {splits}",
              flush=True)
        works = [w for w in (_load_split(s, input_uri, output) for s in splits) if w is not None]
        already = total - sum(w.todo.num_rows for w in works)
        progress = Progress(total, already)
        counters: Counter = Counter()
        _process(works, settings, t, progress, counters)
        elapsed = time.perf_counter() - progress.start
        run_metrics = {
            "rows_processed": counters["rows"] + counters["rejects"],
            "rows_skipped": already,
            "rows_per_s": (counters["rows"] + counters["rejects"]) / elapsed if elapsed > 0 else 0.0,
            "rows_per_s_steady": progress.steady_rate,
            "rejects_this_run": counters["rejects"],
            "shards_committed": counters["shards"],
            "tokens_generated": counters["tokens"],
            "retries": counters["retries"],
            **{k: v for k, v in counters.items() if k.startswith("retries_")},
        }
        teacher_quality = quality(output, splits)
        metrics = {**teacher_quality, **run_metrics}
        notes = {"stage": "rationales", "input": input_uri, "teacher": name, "backend": t.backend,
                 "rationale_columns": list(RATIONALE_COLUMNS), "rationalize_splits": list(t.rationalize_splits),
                 "lrsa_rationales": t.lrsa_rationales, "quality": teacher_quality}
        manifest = _write_manifest(output, input_manifest, splits, notes)
        metrics["rejects"] = manifest["rejects"]
        tracking.log_metrics(metrics)
        tracking.log_json(manifest, "rationales/manifest.json")
        tracking.log_text(sample_markdown(output, splits[0]), "rationales/sample_chains.md")
    print(f"rationales: wrote {output}: {manifest['counts']}, {manifest['rejects']} rejects"
          f"{' ' + json.dumps(manifest['reject_reasons']) if manifest['rejects'] else ''}; "
          f"{run_metrics['rows_processed']} rows this run at {run_metrics['rows_per_s']:.2f} rows/s, "
          f"{run_metrics['retries']} retries", flush=True)
    if "pass1_accuracy" in metrics:
        print(f"rationales: pass-1 teacher accuracy {metrics['pass1_accuracy']:.3f}, parse failures "
              f"{metrics.get('parse_failure_rate', 0):.3f}", flush=True)
    return {"output": output, "skipped": False, "manifest": manifest, "metrics": metrics}
