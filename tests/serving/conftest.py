"""Serving fixtures: one Serve instance (HTTP on a free loopback port) for the whole session.

Serve's HTTP options are per cluster, so every serving test module shares one proxy and
deploys its own application under its own route prefix; each module deletes its
application when it ends, and the session fixture shuts Serve down at the very end.
"""

from __future__ import annotations

import base64
import io

import pytest
import yaml

from tests.conftest import free_port


@pytest.fixture(scope="session")
def serve_base(ray_cluster):
    from ray import serve

    from sentiray.serving.app import start_serve

    url = start_serve("127.0.0.1", free_port())
    yield url
    serve.shutdown()


def deploy(tmp_path, base_url: str, application: dict) -> str:
    """Deploy one application from a Serve YAML, through `sentiray serve FILE --no-block`; its URL."""
    from sentiray.serving.app import serve_config_file

    host, port = base_url.removeprefix("http://").split(":")
    config = {"http_options": {"host": host, "port": int(port)}, "applications": [application]}
    path = tmp_path / f"{application['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    urls = serve_config_file(str(path), blocking=False)["apps"]
    return urls[application["name"]]


@pytest.fixture(scope="session")
def posts():
    """Synthetic posts with real images (PNG bytes) and labels."""
    from sentiray.data import synthetic

    return synthetic.generate("msc", 40, seed=5).splits["train"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(width: int, height: int, noise: bool = False, fmt: str = "PNG") -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = (
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if noise
        else np.full((height, width, 3), 128, np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_vlm_b(tmp_path_factory) -> str:
    """A second tiny VLM (another seed: other weights, other answers), for multiplexing and swaps."""
    from sentiray.models.tiny import build_tiny_vlm

    return build_tiny_vlm(str(tmp_path_factory.mktemp("tiny-vlm-b")), seed=1)
