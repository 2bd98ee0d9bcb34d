"""Shared fixtures: a loopback S3 server, one Ray cluster per session, tiny models."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on loopback, with a bucket ``sentiray-test``.

    Sets the AWS environment variables for the whole session so that s3fs (and Ray
    workers started afterwards) talk to it.
    """
    port = free_port()
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="sentiray-test")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_uri(s3_server, request):
    """A fresh s3:// prefix in the test bucket, unique per test."""
    name = request.node.name.replace("[", "_").replace("]", "_")
    return f"s3://sentiray-test/{name}-{time.time_ns()}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny HF models (vlm, causal_lm, encoder) built once per session."""
    from sentiray.models.tiny import build_tiny_models

    return build_tiny_models(str(tmp_path_factory.mktemp("tiny-models")))


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster shared by every test that needs it.

    After the S3 server: Ray's workers inherit the AWS variables at ray.init, so a test writing
    to s3:// must not depend on whether an earlier test happened to start the server first."""
    import ray

    from sentiray import runtime

    if not ray.is_initialized():
        runtime.set_serve_env()  # what a local cluster sentiray starts has
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
