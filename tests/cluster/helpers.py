"""A Ray head node started the way an operator starts one: `ray start --head --block`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.conftest import free_port

BIN = Path(sys.executable).parent
# Variables the head must not inherit from the test session: the jobs must get them from the
# submission's runtime environment, which is what the tests check. RAY_AUTH_*: a user's shell has
# none (the session's own local ray.init() sets RAY_AUTH_MODE=token in this process). The Serve
# ingress variables sentiray sets for the local clusters it starts: `ray start` in a user's
# shell has none.
SCRUBBED_PREFIXES = ("AWS_", "MLFLOW_", "SENTIRAY_", "RAY_ADDRESS", "RAY_AUTH_", "RAY_SERVE_")
TOKEN_FILE = Path("~/.ray/auth_token").expanduser()


def user_env() -> dict[str, str]:
    """This session's environment as a user's shell has it: no RAY_AUTH_* set by hand."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}


def ensure_token_file() -> str:
    """~/.ray/auth_token, as a user's machine has it after any local ray.init() (the demo, a
    test): made here if no earlier test made it, so no test depends on the order they run in."""
    if not TOKEN_FILE.is_file() or not TOKEN_FILE.read_text().strip():
        subprocess.run(
            [str(BIN / "ray"), "get-auth-token", "--generate"],
            env=user_env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
    return TOKEN_FILE.read_text().strip()


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ensure_token_file()}"}


def head_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env["PATH"] = f"{BIN}:{os.environ['PATH']}"  # the job's `sentiray` is this virtual environment's
    # A test node has nothing to drain on SIGTERM: stop at once instead of waiting up to 30 s.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    return env


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """Yields the dashboard address and the environment the node runs with.

    Started as a user starts it on a machine where a local Ray has run: ~/.ray/auth_token exists
    and RAY_AUTH_MODE is unset, so Ray 2.60 turns token authentication on.
    Own ports and temp dir; `--block` in its own process group, so stopping it stops this node
    only, never another Ray cluster of the test session (which `ray stop` would kill too).
    """
    ensure_token_file()
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    dash = free_port()
    env = head_env()
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={free_port()}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        "--block",
    ]
    proc = subprocess.Popen(
        start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        wait_for_http(f"{address}/api/version", timeout=120, proc=proc, headers=auth_headers())
        yield address, env
    finally:
        stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, headers: dict[str, str] | None = None
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_node(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` node: its process group, then by pid whatever of its process
    tree left the group (a job's driver runs in a session of its own and would outlive it)."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    stop_process_group(proc)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def stop_process_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
