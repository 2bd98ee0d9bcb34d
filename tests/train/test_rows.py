"""Which train rows reach the loop: a pass-2 chain the teacher flagged ``use_for_training=false``
stays in the data set but trains on neither row source (in memory or streamed through Ray Data)."""

from __future__ import annotations

import pickle
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sentiray import config, families
from sentiray.data import schema
from sentiray.data.prepare import run as prepare
from sentiray.train import data as train_data

TOY = "tests.families.test_family_seam:ToyFamily"


@pytest.fixture(scope="module")
def flagged(tmp_path_factory) -> dict:
    """A synthetic msc data set whose train split carries the teacher's flag: every third row false,
    every fifth null (a row the teacher did not judge trains)."""
    root = tmp_path_factory.mktemp("flagged")
    prepare(
        config.validate(
            {
                "stage": "data",
                "storage": {"root": str(root)},
                "data": {"format": "synthetic", "task": "msc", "size": 100, "output": "data"},
            }
        )
    )
    train_dir = root / "data" / "train"
    table = schema.read_table(str(root / "data"), "train")
    flags = [None if i % 5 == 0 else i % 3 != 0 for i in range(table.num_rows)]
    shutil.rmtree(train_dir)
    train_dir.mkdir()
    half = table.num_rows // 2  # two shards, so the count adds up across files
    flagged_table = table.append_column(train_data.TRAINING_FLAG, pa.array(flags, pa.bool_()))
    pq.write_table(flagged_table.slice(0, half), train_dir / "part-00000.parquet")
    pq.write_table(flagged_table.slice(half), train_dir / "part-00001.parquet")
    ids = table.column("id").to_pylist()
    kept = {i for i, f in zip(ids, flags) if f is not False}
    assert 0 < len(kept) < len(ids)
    return {"root": root, "kept": kept, "all": set(ids)}


def toy_family(flagged, stream: bool, **train):
    job = config.validate(
        {
            "stage": "train",
            "storage": {"root": str(flagged["root"])},
            "data": {"format": "canonical", "input": "data"},
            "model": {"path": "unused-by-the-toy"},
            "train": {"family": TOY, "batch_size": 4, "num_workers": 1, "stream": stream, **train},
        }
    )
    return families.create(job), job


def test_flagged_rows_are_counted_out_and_left_out_in_memory(flagged):
    family, _ = toy_family(flagged, stream=False)
    assert train_data.split_rows(family.data_uri()) == len(flagged["kept"])
    rows = train_data.InMemoryRows(family, rank=0, world=1)
    assert rows.n_rows == len(flagged["kept"])
    seen = {example["id"] for batch in rows.epoch(0, 0) for example in batch}
    assert seen == flagged["kept"]


def counted_rows(flagged, **train) -> tuple[train_data.InMemoryRows, list[str]]:
    """In-memory rows of the toy family, with the ids its transform was called on."""
    family, _ = toy_family(flagged, stream=False, **train)
    calls: list[str] = []
    transform = family.transform

    def counted(row):
        calls.append(row["id"])
        return transform(row)

    family.transform = counted
    return train_data.InMemoryRows(family, rank=0, world=1), calls


def test_in_memory_rows_are_transformed_once_and_the_same_every_epoch(flagged):
    """Later epochs reuse the first epoch's examples (on small data the per-epoch transform, or
    the streamed path's per-epoch pipeline start, cost more than the steps)."""
    rows, calls = counted_rows(flagged)
    epochs = [[example for batch in rows.epoch(epoch, 0) for example in batch] for epoch in range(3)]
    assert sorted(calls) == sorted(flagged["kept"])  # each kept row transformed exactly once
    assert [e["id"] for e in epochs[0]] != [e["id"] for e in epochs[1]]  # still reshuffled per epoch
    by_id = {e["id"]: e for e in epochs[0]}
    assert all(e == by_id[e["id"]] for e in epochs[1] + epochs[2])
    # a resumed epoch (from micro-batch 3) gives the same micro-batches as the full one did
    resumed = [example["id"] for batch in rows.epoch(1, 3) for example in batch]
    assert resumed == [e["id"] for e in epochs[1][3 * 4 :]]


def test_in_memory_rows_past_the_cache_budget_are_transformed_every_epoch(flagged):
    kept = len(flagged["kept"])
    rows, calls = counted_rows(flagged, cache_mb=0)
    for epoch in range(2):
        list(rows.epoch(epoch, 0))
    assert len(calls) == 2 * kept and not rows.examples
    # a budget of a few examples' size keeps those few and transforms the rest again
    one = len(pickle.dumps(rows.example(0), protocol=5))
    rows, calls = counted_rows(flagged, cache_mb=3.5 * one / 2**20)
    for epoch in range(2):
        list(rows.epoch(epoch, 0))
    assert 2 <= len(rows.examples) <= 4  # rows differ in size by a few bytes
    assert len(calls) == 2 * kept - len(rows.examples)


@pytest.mark.slow
def test_flagged_rows_are_left_out_of_the_streamed_split(flagged, ray_cluster):
    family, job = toy_family(flagged, stream=True)
    ds = train_data.train_dataset(job, family)
    seen = [pickle.loads(row["example"])["id"] for row in ds.iter_rows()]
    assert sorted(seen) == sorted(flagged["kept"])  # each kept row once, no flagged row


def test_a_split_whose_every_row_is_flagged_fails_before_ray_starts(flagged, tmp_path):
    """A weak teacher can flag every chain: training then fails on the driver, naming the cure."""
    root = tmp_path / "all-flagged"
    shutil.copytree(flagged["root"], root)
    for part in (root / "data" / "train").glob("*.parquet"):
        table = pq.read_table(part)
        column = table.schema.get_field_index(train_data.TRAINING_FLAG)
        pq.write_table(table.set_column(column, train_data.TRAINING_FLAG, pa.array([False] * table.num_rows)), part)
    family, _ = toy_family({"root": root}, stream=True)
    with pytest.raises(schema.DataError) as err:
        family.check()
    message = str(err.value)
    assert f"none of the {len(flagged['all'])} train rows trains" in message
    assert "teacher.keep_disagreeing_pass2=true" in message
    family, _ = toy_family(flagged, stream=True)
    family.check()  # a split with some rows left trains


def test_more_cpus_than_the_local_cluster_has_fails_before_ray_starts(flagged, tmp_path):
    """2 workers x 1 CPU and the streamed input on a 2-CPU local cluster could never all be
    scheduled (the workers would wait for their first batch for ever): refused up front."""
    import os
    import subprocess
    import sys

    import yaml

    job = tmp_path / "train.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "stage": "train",
                "storage": {"root": str(flagged["root"])},
                "data": {"format": "canonical", "input": "data"},
                "model": {"path": "unused-by-the-toy"},
                "train": {"family": TOY, "batch_size": 4, "num_workers": 2},
                "tracking": {"enabled": False},
            }
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "sentiray.cli", "train", str(job), "ray.num_cpus=2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert run.returncode == 2, run.stderr
    assert "= 2.5 CPUs at once, but the local Ray cluster has 2 (ray.num_cpus)" in run.stderr
    assert "train.data_workers x train.data_cpus" in run.stderr
    assert "Started a local Ray instance" not in run.stderr + run.stdout
