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


def toy_family(flagged, stream: bool):
    job = config.validate(
        {
            "stage": "train",
            "storage": {"root": str(flagged["root"])},
            "data": {"format": "canonical", "input": "data"},
            "model": {"path": "unused-by-the-toy"},
            "train": {"family": TOY, "batch_size": 4, "num_workers": 1, "stream": stream},
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


@pytest.mark.slow
def test_flagged_rows_are_left_out_of_the_streamed_split(flagged, ray_cluster):
    family, job = toy_family(flagged, stream=True)
    ds = train_data.train_dataset(job, family)
    seen = [pickle.loads(row["example"])["id"] for row in ds.iter_rows()]
    assert sorted(seen) == sorted(flagged["kept"])  # each kept row once, no flagged row
