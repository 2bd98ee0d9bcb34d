"""Readers of the public data sets (see formats.md): each turns the folder of one
release into a :class:`~sentiray.data.schema.PreparedDataset` of canonical rows.

A reader is a function ``DataConfig -> PreparedDataset`` registered under the format
names it reads::

    @register("twitter2015", "twitter2017", task="masc")
    def read_twitter(cfg): ...

This module also holds the pieces every reader shares: :class:`Folder` (one filesystem
client for a local or s3:// folder), :class:`ImageStore` (checked images, bytes or
URIs), :class:`RowProblem` (why a row is rejected), feature and split helpers.
"""

from __future__ import annotations

import io
import math
import posixpath
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from sentiray.config import DataConfig
from sentiray.data import storage
from sentiray.data.schema import SPLITS, DataError, PreparedDataset

Reader = Callable[[DataConfig], PreparedDataset]

READERS: dict[str, Reader] = {}
FORMAT_TASKS: dict[str, str] = {}  # format name -> the task its rows carry


def register(*formats: str, task: str) -> Callable[[Reader], Reader]:
    """Register a reader under one or more format names."""

    def add(reader: Reader) -> Reader:
        for name in formats:
            if name in READERS:
                raise ValueError(f"format {name!r} already has a reader ({READERS[name].__name__})")
            READERS[name] = reader
            FORMAT_TASKS[name] = task
        return reader

    return add


def read_dataset(cfg: DataConfig) -> PreparedDataset:
    """Read the public data set that ``cfg`` names into canonical rows."""
    reader = READERS.get(cfg.format)
    if reader is None:
        raise DataError(f"no reader for format {cfg.format!r}; known formats: {', '.join(sorted(READERS))}")
    task = FORMAT_TASKS[cfg.format]
    if cfg.task is not None and cfg.task != task:
        raise DataError(f"format {cfg.format!r} holds task {task!r}, but data.task is {cfg.task!r}")
    if not cfg.input:
        raise DataError(f"format {cfg.format!r} reads a data set: set data.input to its folder")
    return reader(cfg)


# --------------------------------------------------------------------------- rows


class RowProblem(Exception):
    """A row that cannot be used; ``reason`` is ``"code: detail"`` (the code is counted in the manifest)."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.reason = f"{code}: {detail}"


# --------------------------------------------------------------------------- files


class Folder:
    """A folder, local or s3://, with a single filesystem client for all its files
    (a client per file would cost one S3 session per image)."""

    def __init__(self, fs: Any, path: str, remote: bool):
        self.fs, self.path, self.remote = fs, path.rstrip("/") or "/", remote

    @classmethod
    def open(cls, uri: str) -> Folder:
        fs, path = storage.filesystem(uri)
        return cls(fs, path, storage.is_remote(uri))

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts) if parts else self.path

    def child(self, *parts: str) -> Folder:
        return Folder(self.fs, self._path(*parts), self.remote)

    def parent(self) -> Folder | None:
        parent = posixpath.dirname(self.path)
        return Folder(self.fs, parent, self.remote) if parent and parent != self.path else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def uri(self, *parts: str) -> str:
        """The full URI of a file in this folder (what ``image_uri`` stores)."""
        path = self._path(*parts)
        return f"s3://{path}" if self.remote else path

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self._path(*parts))

    def isdir(self, *parts: str) -> bool:
        return self.fs.isdir(self._path(*parts))

    def listdir(self, *parts: str) -> list[str]:
        """Base names directly under this folder (empty when it does not exist)."""
        path = self._path(*parts)
        if not self.fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self._path(*parts), "rb") as f:
            return f.read()

    def stream(self, *parts: str) -> Any:
        """An open binary file, for reading a large file without a copy in memory."""
        return self.fs.open(self._path(*parts), "rb")

    def read_many(self, names: list[str]) -> dict[str, bytes | Exception]:
        """Read many files of this folder at once: name -> bytes, or the exception that
        reading it raised. On S3 the reads run concurrently (one round trip per file
        in sequence would take minutes for a whole release)."""
        paths = {self._path(name): name for name in names}
        try:
            got = self.fs.cat(list(paths), on_error="return") if paths else {}
        except Exception:  # fall back to one read per file below
            got = {}
        out: dict[str, bytes | Exception] = {}
        for path, name in paths.items():
            value = got.get(path)
            if value is None:
                try:
                    value = self.read_bytes(name)
                except Exception as exc:
                    value = exc
            out[name] = value
        return out


def find_image_dir(folder: Folder, preferred: list[str]) -> Folder:
    """The image folder of a release: one of ``preferred`` or ``images/`` inside
    ``folder``, else the only ``*_images`` folder there; then the same beside ``folder``
    (the TomBERT release keeps ``twitter2015/`` and ``twitter2015_images/`` side by side)."""
    looked: list[str] = []
    for place in (folder, folder.parent()):
        if place is None:
            continue
        for name in [*preferred, "images"]:
            looked.append(place.uri(name))
            if place.isdir(name):
                return place.child(name)
        others = [n for n in place.listdir() if n.endswith("_images") and place.isdir(n)]
        if len(others) == 1:
            return place.child(others[0])
        if len(others) > 1:
            raise DataError(
                f"several image folders in {place.uri()} ({', '.join(others)}); expected one of {preferred}"
            )
    raise DataError(f"no image folder found for {folder.uri()}; looked for {', '.join(looked)} and *_images")


def decode_text(data: bytes) -> tuple[str, bool]:
    """Bytes of a text file -> (text, whether a fallback encoding was needed).

    Tweets of the older releases are not always UTF-8; cp1252 then latin-1 (which never
    fails) keep the post instead of dropping it for a few odd bytes.
    """
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), True
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


# --------------------------------------------------------------------------- images


class ImageStore:
    """Images of one image folder, checked once each and cached by name (several rows
    may share an image: one tweet, several aspects).

    ``mode="bytes"`` stores the file's bytes after PIL has verified them; ``"uri"``
    stores the full URI after checking that the file exists (no read, so that a large
    remote folder is not downloaded just to be referenced).
    """

    BATCH = 256  # files per concurrent read in :meth:`prefetch`

    def __init__(self, folder: Folder, mode: str):
        if mode not in ("bytes", "uri"):
            raise DataError(f"unknown image_mode {mode!r}")
        self.folder, self.mode = folder, mode
        self._names: set[str] | None = None
        self._cache: dict[str, dict[str, Any] | RowProblem] = {}

    def prefetch(self, names: list[str]) -> None:
        """Read and check many images at once (concurrent reads on S3)."""
        if self.mode != "bytes":
            return
        todo = [n for n in dict.fromkeys(names) if n not in self._cache and self._found(n) is None]
        for start in range(0, len(todo), self.BATCH):
            for name, data in self.folder.read_many(todo[start : start + self.BATCH]).items():
                self._cache[name] = self._checked(name, data)

    def fields(self, name: str) -> dict[str, Any]:
        """``{"image": bytes}`` or ``{"image_uri": uri}`` for ``name``; raises :class:`RowProblem`."""
        if name not in self._cache:
            found = self._found(name)
            if found is not None:
                self._cache[name] = found
            elif self.mode == "uri":
                self._cache[name] = {"image_uri": self.folder.uri(name)}
            else:
                try:
                    data: bytes | Exception = self.folder.read_bytes(name)
                except Exception as exc:
                    data = exc
                self._cache[name] = self._checked(name, data)
        result = self._cache[name]
        if isinstance(result, RowProblem):
            raise result
        return result

    def _found(self, name: str) -> RowProblem | None:
        """Why ``name`` cannot be an image of this folder, or None when the file exists."""
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
            return RowProblem("bad_image", f"image name {name!r} is not a file name inside {self.folder.uri()}")
        if "/" in name:
            exists = self.folder.exists(name)
        else:
            if self._names is None:
                # One listing instead of one existence check per image (a round trip each on S3).
                self._names = set(self.folder.listdir())
            exists = name in self._names
        return None if exists else RowProblem("missing_image", f"{name} not found in {self.folder.uri()}")

    def _checked(self, name: str, data: bytes | Exception) -> dict[str, Any] | RowProblem:
        try:
            if isinstance(data, Exception):
                raise data
            check_image(data)
        except Exception as exc:  # PIL raises several types (OSError, SyntaxError, ...)
            return RowProblem("bad_image", f"{name} cannot be read as an image ({type(exc).__name__}: {exc})")
        return {"image": data}


def check_image(data: bytes) -> None:
    """Raise unless PIL can parse ``data`` as an image."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.verify()


# --------------------------------------------------------------------------- features


def feature_frames(values: Any, length: int | None = None) -> tuple[np.ndarray, int]:
    """A T x D feature array -> (its first ``length`` frames as a C-contiguous float32 array,
    number of non-finite values replaced by 0). A 1-D vector counts as one frame."""
    array = np.array(values, dtype=np.float32)  # a copy: the caller's array stays untouched
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise RowProblem("bad_features", f"expected a T x D array, got shape {array.shape}")
    if length is not None:
        if length < 0 or length > array.shape[0]:
            raise RowProblem("length_mismatch", f"length {length} outside the {array.shape[0]} frames stored")
        array = array[:length].copy()  # a copy: a view would keep the padded frames alive
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad:
        array[bad] = 0.0
    return array, n_bad


# --------------------------------------------------------------------------- splits


def split_by_ratios(items: list[Any], ratios: tuple[float, float, float], seed: int) -> dict[str, list[Any]]:
    """Shuffle ``items`` with ``seed`` and cut them into train/dev/test by ``ratios``
    (dev and test rounded, train takes the rest so nothing is lost)."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    n_dev = int(math.floor(n * ratios[1] + 0.5))
    n_test = min(int(math.floor(n * ratios[2] + 0.5)), n - n_dev)
    n_train = n - n_dev - n_test
    return {
        SPLITS[0]: shuffled[:n_train],
        SPLITS[1]: shuffled[n_train : n_train + n_dev],
        SPLITS[2]: shuffled[n_train + n_dev :],
    }


# The readers register themselves on import; imported last because they use the helpers above.
from sentiray.data.readers import mabsa, meld, mmsa, mvsa, twitter  # noqa: E402,F401
