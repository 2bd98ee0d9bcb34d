"""storage.local_copy of an s3:// prefix (loopback S3 server): reused while unchanged, refreshed when not."""

import os

from sentiray.data import storage


def _put(uri: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)


def _tree(local: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(local):
        for name in names:
            if name != ".sentiray-complete":
                path = os.path.join(root, name)
                out[os.path.relpath(path, local)] = open(path, "rb").read()
    return out


def test_local_copy_is_refreshed_when_the_prefix_changes(tmp_path, s3_uri):
    cache = str(tmp_path / "cache")
    _put(s3_uri, {"config.json": b'{"v": 1}', "weights/a.bin": b"A" * 100})
    local = storage.local_copy(s3_uri, cache_dir=cache)
    assert _tree(local) == {"config.json": b'{"v": 1}', os.path.join("weights", "a.bin"): b"A" * 100}

    # unchanged: the same copy, not downloaded again
    stamp = os.stat(os.path.join(local, "weights", "a.bin")).st_mtime_ns
    assert storage.local_copy(s3_uri, cache_dir=cache) == local
    assert os.stat(os.path.join(local, "weights", "a.bin")).st_mtime_ns == stamp

    # the same size, other bytes (only the ETag tells), one object added: refreshed, same path
    _put(s3_uri, {"config.json": b'{"v": 2}', "weights/b.bin": b"B" * 10})
    assert storage.local_copy(s3_uri, cache_dir=cache) == local
    assert _tree(local) == {
        "config.json": b'{"v": 2}',
        os.path.join("weights", "a.bin"): b"A" * 100,
        os.path.join("weights", "b.bin"): b"B" * 10,
    }

    # an object removed: gone from the copy too
    storage.remove(storage.join(s3_uri, "weights", "a.bin"))
    assert _tree(storage.local_copy(s3_uri, cache_dir=cache)) == {
        "config.json": b'{"v": 2}',
        os.path.join("weights", "b.bin"): b"B" * 10,
    }
    # no half-finished downloads left beside the copy
    assert sorted(os.listdir(cache)) == [os.path.basename(local)]
