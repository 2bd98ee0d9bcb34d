"""`ray job submit --working-dir . -- sentiray run jobs/data.yaml` against `ray start --head`."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sentiray.data import schema
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head_node():
    """A Ray head started with `ray start --head` on its own ports and temp dir."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    start = [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
             "--dashboard-host=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp}", "--disable-usage-stats",
             f"--ray-client-server-port={free_port()}", "--block"]
    # --block in its own process group: stopping it stops this node only, never the
    # test session's other Ray cluster (which `ray stop` would kill too).
    proc = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        wait_for_http(f"{address}/api/version", timeout=120, proc=proc)
        yield address, env
    finally:
        stop_process_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_http(url: str, timeout: float, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process_group(proc, timeout: float = 10) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_ray_job_submit_runs_a_stage(head_node, tmp_path):
    address, env = head_node
    out = tmp_path / "data"
    store = tmp_path / "mlflow" / "mlflow.db"
    cmd = [str(BIN / "ray"), "job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
           "sentiray", "run", "jobs/data.yaml", f"data.output={out}", "data.size=40",
           f"tracking.tracking_uri=sqlite:///{store}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert "data: wrote" in proc.stdout
    manifest = schema.read_manifest(str(out))
    assert sum(manifest["counts"].values()) == 40
    assert store.exists()
