"""Images of canonical rows: bytes in the row, or a URI (local or s3://)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from sentiray.data import storage


class ImageError(ValueError):
    """A row's image is missing or cannot be decoded."""


def decode(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises several types for broken files
        raise ImageError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    return image.convert("RGB")


def load(row: dict[str, Any]) -> Image.Image | None:
    """The row's image as RGB, or None when the row has none."""
    if row.get("image"):
        return decode(row["image"])
    uri = row.get("image_uri")
    if uri:
        try:
            return decode(storage.read_bytes(uri))
        except FileNotFoundError:
            raise ImageError(f"image {uri} does not exist") from None
    return None


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
