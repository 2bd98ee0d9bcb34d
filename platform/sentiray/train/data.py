"""Where a worker's training rows come from: streamed through Ray Data, or in memory.

Both give the loop the same thing: per epoch, the rank's micro-batches of *transformed*
rows (the family's :meth:`~sentiray.families.base.Family.transform`), as many on every rank,
in a deterministic order, so that a resumed run skips exactly the micro-batches it had
done.

- :class:`StreamedRows` (``train.stream: true``, the default): the train split goes to
  ``TorchTrainer`` as a Ray Dataset read from Parquet (local or s3://) in blocks; the
  family's transform (image decoding and resizing, tokenizing) runs in Ray Data actors
  (``map_batches``), ahead of the step loop (prefetch); each worker iterates only its
  shard (``ray.train.get_dataset_shard``, an equal split of the rows padded to a multiple of
  the workers by repeating the first few: ``ceil(N / workers)`` rows each) and
  holds a bounded number of rows at a time, however large the split. Order is preserved
  (deterministic splits) and shuffled per epoch in a seeded local buffer.
- :class:`InMemoryRows` (``train.stream: false``): every worker reads the whole split into
  memory and transforms each row once, in the step loop the first time it comes up, then
  keeps the result for the later epochs; a seeded global permutation per epoch. For small
  data (no Ray Data pipeline to start again every epoch), or to compare against.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from typing import Any

from sentiray.config import JobConfig, validate
from sentiray.data import schema, storage

DATASET = "train"
# The teacher stage's flag (teacher/pipeline.py): a pass-2 chain that still disagrees with the
# gold label is kept in the data set, flagged false, and left out of training here. Rows of a
# data set without the column (data prepare, augment) all train.
TRAINING_FLAG = "use_for_training"


def _flag_columns(data_uri: str) -> list[str]:
    """``[TRAINING_FLAG]`` if the train split carries the flag, else ``[]`` (read from a footer)."""
    import pyarrow.parquet as pq

    for uri in schema.split_uris(data_uri, "train")[:1]:
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            return [TRAINING_FLAG] if TRAINING_FLAG in pq.ParquetFile(f).schema_arrow.names else []
    return []


def trains(row: dict[str, Any]) -> bool:
    """Whether a row goes into training: all but those the teacher flagged false."""
    return row.get(TRAINING_FLAG) is not False


def micro_batches(n_rows: int, rank: int, world: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's micro-batches of row indices for one epoch (in-memory rows).

    A seeded permutation per epoch, padded by wrapping so every rank gets the same number
    of micro-batches (ranks must step together), then strided by rank.
    """
    import random

    order = list(range(n_rows))
    random.Random(seed * 1000 + epoch).shuffle(order)
    per_rank = math.ceil(n_rows / world)
    order = (order * (world + 1))[: per_rank * world]
    mine = order[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


class InMemoryRows:
    """The whole split in this worker's memory, each row transformed once and kept.

    The transform is deterministic (decode, resize, tokenize), so a kept example is the one a
    later epoch would make again; keeping it spares every epoch after the first the transform
    (on small data the streamed path spends more time starting its Ray Data pipeline again each
    epoch than training: README, "Training input at scale"). Examples are kept up to
    ``train.cache_mb`` (their pickled size); the rest are transformed again when they come up.
    """

    def __init__(self, family, rank: int, world: int):
        self.family, self.rank, self.world = family, rank, world
        self.train = family.job.train
        columns = list(family.columns) + _flag_columns(family.data_uri()) if family.columns else None
        self.rows = [r for r in schema.read_rows(family.data_uri(), "train", columns) if trains(r)]
        self.examples: dict[int, dict[str, Any]] = {}
        self.cache_bytes_left = self.train.cache_mb * 2**20

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    def n_micro(self) -> int:
        return len(micro_batches(len(self.rows), self.rank, self.world, self.train.batch_size, self.train.seed, 0))

    def epoch(self, epoch: int, start: int) -> Iterator[list[dict[str, Any]]]:
        batches = micro_batches(len(self.rows), self.rank, self.world, self.train.batch_size, self.train.seed, epoch)
        for indices in batches[start:]:
            yield [self.example(i) for i in indices]

    def example(self, index: int) -> dict[str, Any]:
        if index in self.examples:
            return self.examples[index]
        example = self.family.transform(self.rows[index])
        if self.cache_bytes_left > 0:
            size = len(pickle.dumps(example, protocol=5))
            if size <= self.cache_bytes_left:
                self.examples[index] = example
            self.cache_bytes_left -= size  # the first that does not fit ends the caching
        return example


class StreamedRows:
    """This worker's shard of the Ray Dataset built by :func:`train_dataset`."""

    def __init__(self, family, rank: int, world: int):
        import ray.train

        self.family, self.rank, self.world = family, rank, world
        self.train = family.job.train
        self.n_rows = split_rows(family.data_uri())
        self.shard = ray.train.get_dataset_shard(DATASET)

    def n_micro(self) -> int:
        # the dataset is padded to a multiple of the workers, then split equally
        return math.ceil(math.ceil(self.n_rows / self.world) / self.train.batch_size)

    def epoch(self, epoch: int, start: int) -> Iterator[list[dict[str, Any]]]:
        t = self.train
        batches = self.shard.iter_batches(
            batch_size=t.batch_size,
            batch_format="pyarrow",
            prefetch_batches=t.prefetch_batches,
            local_shuffle_buffer_size=t.shuffle_buffer or None,
            local_shuffle_seed=t.seed * 1000 + epoch,
        )
        for index, batch in enumerate(batches):
            if index < start:  # resume: these were trained before the checkpoint
                continue
            yield [pickle.loads(b) for b in batch.column("example").to_pylist()]


def _row_counts(data_uri: str, split: str) -> tuple[int, int]:
    """(rows, rows that train) of a split: from the Parquet footers, or the flag column where there is one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = trained = 0
    for uri in schema.split_uris(data_uri, split):
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            n = parquet.metadata.num_rows
            rows += n
            if TRAINING_FLAG not in parquet.schema_arrow.names:
                trained += n
                continue
            flag = parquet.read(columns=[TRAINING_FLAG]).column(0)
            trained += n - (pc.sum(pc.equal(flag, False)).as_py() or 0)  # nulls train
    return rows, trained


def split_rows(data_uri: str, split: str = "train") -> int:
    """Rows of a split that train (all but those the teacher flagged false)."""
    return _row_counts(data_uri, split)[1]


def check_trainable(data_uri: str) -> None:
    """Fail (before Ray starts) when no train row would reach the loop, saying why."""
    if not schema.split_uris(data_uri, "train"):
        raise schema.DataError(f"{data_uri} has no train split to train on")
    rows, trained = _row_counts(data_uri, "train")
    if trained > 0:
        return
    if rows == 0:
        raise schema.DataError(f"{data_uri}: the train split has no rows")
    raise schema.DataError(
        f"{data_uri}: none of the {rows} train rows trains: the teacher stage flagged every one "
        f"{TRAINING_FLAG}=false (its pass-2 chain still disagrees with the gold label). Rerun the rationales "
        "stage with a stronger teacher, or with teacher.keep_disagreeing_pass2=true to train on those chains."
    )


class TransformRows:
    """``map_batches`` callable: the family's per-row transform, the family built once per actor.

    Examples are pickled into one binary column: they hold tensors and small objects that
    Arrow has no type for, and the worker unpickles exactly what the family returned.
    """

    def __init__(self, job: dict[str, Any]):
        from sentiray import families

        self.family = families.create(validate(job, source="train data actor"))

    def __call__(self, batch) -> dict[str, list[bytes]]:
        return {"example": [pickle.dumps(self.family.transform(row), protocol=5) for row in batch.to_pylist()]}


def train_dataset(cfg: JobConfig, family):
    """The streamed train split: Parquet blocks -> the family's transform in Ray Data actors."""
    import ray.data

    t = cfg.train
    uris = schema.split_uris(family.data_uri(), "train")
    if not uris:
        raise schema.DataError(f"{family.data_uri()} has no train split to train on")
    fs, _ = storage.pyarrow_filesystem(uris[0])
    paths = [storage.pyarrow_filesystem(u)[1] for u in uris]
    flag = _flag_columns(family.data_uri())
    ds = ray.data.read_parquet(
        paths,
        filesystem=fs,
        columns=list(family.columns) + flag if family.columns else None,
        num_cpus=t.data_cpus,
    )  # reading is light: not a whole CPU each
    if flag:
        from ray.data.expressions import col

        # :func:`trains` as an expression (Arrow-native, no Python per row); as light as the read
        flagged = col(TRAINING_FLAG)
        ds = ds.filter(expr=flagged.is_null() | (flagged == True), num_cpus=t.data_cpus)  # noqa: E712
    # An equal split drops the N % workers last rows, the same ones every epoch (the order is
    # fixed): repeat the first few instead, as the in-memory path wraps, so that every row trains.
    pad = -split_rows(family.data_uri()) % t.num_workers
    if pad:
        ds = ds.union(ds.limit(pad))
    ds = ds.map_batches(
        TransformRows,
        fn_constructor_kwargs={"job": cfg.model_dump(mode="json")},
        batch_format="pyarrow",
        batch_size=max(t.batch_size, 16),
        compute=ray.data.ActorPoolStrategy(size=t.data_workers),
        num_cpus=t.data_cpus,
    )
    # Transformed rows are large (pixels, token ids): with Ray Data's default block target
    # (128 MiB) an actor would transform a whole Parquet shard before the first micro-batch
    # leaves it. Small blocks stream out as they are made (measured: first batch 52 s -> 15 s,
    # most of it the actor's start-up, on a 10k-row split).
    ds.context.target_max_block_size = 4 * 2**20
    return ds


def data_cpus(train) -> float:
    """CPUs the streamed input holds beside the training workers: the transform actors and one
    read task at a time (the scheduler must leave them room, or the workers wait for ever)."""
    return train.data_workers * train.data_cpus + train.data_cpus


def dataset_config():
    """Equal, order-preserving shards: every rank gets N // world rows, the same ones on every
    run (Ray Data's splitter is deterministic when order is preserved), so a resume knows
    which rows it had trained."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=[DATASET], execution_options=ExecutionOptions(preserve_order=True))


def worker_rows(family, rank: int, world: int):
    """This worker's row source, as ``train.stream`` says."""
    cls = StreamedRows if family.job.train.stream else InMemoryRows
    return cls(family, rank, world)
