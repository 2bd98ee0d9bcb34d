"""The canonical data set: shards, manifest, rejects, local and s3:// alike."""

import io

import numpy as np
import pytest
from PIL import Image

from sentiray.data import schema, storage
from sentiray.data.schema import PreparedDataset, Reject, canonical_row


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def comparable(rows):
    """Rows with their feature arrays as (dtype, shape, bytes), so that == compares them exactly."""

    def key(name, v):
        if name in schema.FEATURE_COLUMNS and v is not None:
            v = np.asarray(v, dtype=np.float32)  # written as nested lists, read back as float32 arrays
            return (str(v.dtype), v.shape, v.tobytes())
        return v

    return [{k: key(k, v) for k, v in row.items()} for row in rows]


def sample_dataset(n_train=25) -> PreparedDataset:
    def row(split, i):
        return canonical_row(
            id=f"t-{split}-{i}",
            task="msa",
            text=f"clip {i}",
            source="test",
            image=png((i % 255, 0, 0)),
            audio=[[float(i), 0.5]] * (i % 3 + 1),
            vision=[[1.0, 2.0, 3.0]],
            label=schema.SENTIMENT_LABELS[i % 3],
            score=(i % 7) - 3.0,
            spans=[{"start": 0, "end": 1, "polarity": "positive"}] if i % 2 else None,
        )

    return PreparedDataset(
        source="test",
        task="msa",
        splits={
            "train": [row("train", i) for i in range(n_train)],
            "dev": [row("dev", i) for i in range(4)],
            "test": [],
        },
        rejects=[Reject("train", "bad-1", "test", "missing_image: x.jpg", raw="1\tx.jpg")],
        notes={"dropped": {"missing_image": 1}},
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_read_roundtrip(tmp_path, request, where):
    uri = str(tmp_path / "ds") if where == "local" else request.getfixturevalue("s3_uri")
    data = sample_dataset()
    manifest = schema.write_dataset(data, uri, shard_rows=10)
    assert manifest["counts"] == {"train": 25, "dev": 4, "test": 0}
    assert manifest["rejects"] == 1 and manifest["reject_reasons"] == {"missing_image": 1}
    assert schema.is_complete(uri)
    # train is written in 3 shards of at most 10 rows
    assert len(schema.split_uris(uri, "train")) == 3
    rows = schema.read_rows(uri, "train")
    assert comparable(rows) == comparable(data.splits["train"])  # identical, image bytes and features included
    assert rows[0]["audio"].dtype == np.float32 and rows[0]["audio"].shape == (1, 2)
    assert schema.read_rows(uri, "test") == []
    rejects = schema.read_rows(uri, "rejects")
    assert rejects[0]["reason"] == "missing_image: x.jpg" and rejects[0]["id"] == "bad-1"
    stats = schema.dataset_stats(uri)
    assert stats["splits"]["train"]["rows"] == 25
    assert stats["splits"]["train"]["coverage"]["image"] == 25
    assert stats["splits"]["train"]["coverage"]["spans"] == 12
    assert stats["splits"]["train"]["score"]["min"] == -3.0


def test_rewrite_replaces_old_shards(tmp_path):
    uri = str(tmp_path / "ds")
    schema.write_dataset(sample_dataset(25), uri, shard_rows=5)
    schema.write_dataset(sample_dataset(7), uri, shard_rows=5)
    assert len(schema.read_rows(uri, "train")) == 7
    assert len(schema.split_uris(uri, "train")) == 2


def test_incomplete_dataset_is_refused(tmp_path):
    uri = str(tmp_path / "ds")
    schema.write_dataset(sample_dataset(), uri)
    storage.remove(storage.join(uri, "_manifest.json"))
    with pytest.raises(schema.DataError, match="not a complete sentiray data set"):
        schema.read_manifest(uri)


def test_canonical_row_refuses_unknown_and_missing():
    with pytest.raises(schema.DataError, match="unknown canonical columns"):
        canonical_row(id="a", task="msc", text="t", source="s", colour="red")
    with pytest.raises(schema.DataError, match="missing 'text'"):
        canonical_row(id="a", task="msc", source="s")


def test_storage_atomic_write_and_listing(tmp_path, s3_uri):
    for base in (str(tmp_path), s3_uri):
        storage.write_json(storage.join(base, "a", "x.json"), {"k": 1})
        storage.write_bytes(storage.join(base, "a", "y.bin"), b"\x00\x01")
        assert storage.read_json(storage.join(base, "a", "x.json")) == {"k": 1}
        assert storage.listdir(storage.join(base, "a")) == ["x.json", "y.bin"]
        assert storage.listdir(storage.join(base, "missing")) == []
    # no temporary files left behind locally
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.bin"]


def test_local_copy_of_s3_tree(tmp_path, s3_uri):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("A")
    (src / "sub" / "b.txt").write_text("B")
    storage.upload_dir(str(src), s3_uri)
    local = storage.local_copy(s3_uri, cache_dir=str(tmp_path / "cache"))
    assert open(f"{local}/a.txt").read() == "A" and open(f"{local}/sub/b.txt").read() == "B"
    assert storage.local_copy(s3_uri, cache_dir=str(tmp_path / "cache")) == local  # cached
