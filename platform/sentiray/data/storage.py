"""One way to reach files, local or s3://.

Every stage reads and writes URIs. Local paths and ``file://`` URIs go to the local disk;
``s3://bucket/key`` goes through s3fs with the endpoint and keys from the usual AWS
environment variables (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import fsspec

_S3_PREFIXES = ("s3://", "s3a://")


def is_remote(uri: str) -> bool:
    return str(uri).startswith(_S3_PREFIXES)


def _s3_options() -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options.setdefault("client_kwargs", {})["region_name"] = region
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    uri = str(uri)
    if is_remote(uri):
        import s3fs

        # A fresh instance each time: s3fs caches instances per options and the
        # endpoint may change between tests (and between jobs on one worker).
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **_s3_options())
        return fs, uri.split("://", 1)[1]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return fsspec.filesystem("file"), os.path.abspath(uri)


def pyarrow_filesystem(uri: str):
    """A pyarrow filesystem and path for ``uri`` (for pyarrow / Ray Data readers)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if not is_remote(uri):
        fs.makedirs(path, exist_ok=True)
    # S3 has no directories: keys appear when written.


def listdir(uri: str) -> list[str]:
    """Base names of the entries directly under ``uri`` (empty if it does not exist)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see either nothing or the whole file.

    Locally: write a temporary file beside it, then rename. On S3 a single PUT is
    already atomic.
    """
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str))


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local directory tree to ``uri`` (local or s3)."""
    if not is_remote(uri):
        dest = filesystem(uri)[1]
        if os.path.abspath(local_dir) != dest:
            shutil.copytree(local_dir, dest, dirs_exist_ok=True)
        return
    fs, path = filesystem(uri)
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            fs.put_file(src, posixpath.join(path, rel))


def copy_dir(src: str, dst: str) -> None:
    """Copy the tree at ``src`` to ``dst``, either side local or s3://."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copytree(filesystem(src)[1], filesystem(dst)[1], dirs_exist_ok=True)
        return
    if is_remote(src) and is_remote(dst):
        fs, src_path = filesystem(src)
        dst_path = filesystem(dst)[1]
        for remote in fs.find(src_path):
            fs.copy(remote, posixpath.join(dst_path, posixpath.relpath(remote, src_path)))
        return
    if is_remote(dst):
        upload_dir(filesystem(src)[1], dst)
        return
    fs, src_path = filesystem(src)
    for remote in fs.find(src_path):
        dest = Path(filesystem(dst)[1]) / posixpath.relpath(remote, src_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(dest))


def _listing_fingerprint(fs, path: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """A digest of the objects under ``path`` (key, size, ETag, else mtime) and the listing itself."""
    import hashlib

    listing = fs.find(path, detail=True)
    digest = hashlib.sha256()
    for key in sorted(listing):
        info = listing[key]
        stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        digest.update(f"{key}\x1f{info.get('size')}\x1f{stamp}\n".encode())
    return digest.hexdigest(), listing


def local_copy(uri: str, cache_dir: str | None = None) -> str:
    """A local directory holding the tree at ``uri``: the path itself when local, else a
    download into a cache keyed by the URI, reused while the prefix is unchanged.

    Each call lists the prefix (one request) and compares a fingerprint of the listing
    (keys, sizes, ETags) with the copy's: a model or data set rewritten under the same URI
    is downloaded again, never served stale. The path stays the same across refreshes.
    """
    if not is_remote(uri):
        return filesystem(uri)[1]
    cache_root = Path(cache_dir or os.environ.get("SENTIRAY_CACHE", Path(tempfile.gettempdir()) / "sentiray-cache"))
    key = uri.split("://", 1)[1].strip("/").replace("/", "__")
    target = cache_root / key
    done = target / ".sentiray-complete"
    fs, path = filesystem(uri)
    fingerprint, listing = _listing_fingerprint(fs, path)
    if done.exists() and done.read_text().strip() == fingerprint:
        return str(target)
    tmp = cache_root / f"{key}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True, exist_ok=True)
    for remote in listing:
        rel = posixpath.relpath(remote, path)
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(dest))
    # The fingerprint of the listing taken before the download: an object changed while we
    # copied makes the next call's listing differ, so that call downloads again.
    (tmp / ".sentiray-complete").write_text(fingerprint)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process (an actor on this node) put its fresh copy there first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
