"""A real multi-node Ray cluster on loopback: a head and worker nodes, each its own `ray start`.

Each node is a `ray start ... --block` process in its own process group, with its own temp dir,
ports and a custom resource naming it (``node_a``: 1), so a test can place work on a node and
kill that node alone: its raylet by pid (what a lost machine looks like to Ray), or the whole
node by process group at teardown. Never `ray stop`, which stops every Ray on the machine.

The head runs as a user starts it where a local Ray has run (token authentication on, see
tests.cluster.helpers); worker nodes join with RAY_AUTH_MODE=token and the same token, as Ray's
docs ask of every node. The head has no CPUs: every task, actor, Train worker and replica runs
on a worker node, so killing one takes real work away. Its health check is tightened so that a
dead node is noticed in about 2 s instead of about 30 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.cluster.helpers import (
    BIN,
    auth_headers,
    ensure_token_file,
    head_env,
    stop_node,
    wait_for_http,
)
from tests.conftest import free_port

# Seen by the GCS: how fast a node whose raylet stopped answering is declared dead.
FAST_HEALTH_CHECK = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}
# Per node (Ray's default is 30% of RAM each): the tests move kilobytes; five nodes must fit /dev/shm.
OBJECT_STORE_BYTES = 256 * 1024**2


@dataclass
class Node:
    name: str  # "head", "a", "b", ...
    proc: subprocess.Popen  # `ray start --block`: its children are this node's Ray processes
    temp_dir: str
    node_id: str = ""
    started_s: float = 0.0  # seconds from `ray start` until the cluster listed it alive

    @property
    def resource(self) -> str:
        return f"node_{self.name}"

    def raylet_pid(self) -> int:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.name() == "raylet":
                return child.pid
        raise RuntimeError(f"node {self.name} has no raylet process")


@dataclass
class MultiNodeCluster:
    env: dict[str, str] = field(default_factory=head_env)
    nodes: dict[str, Node] = field(default_factory=dict)
    gcs_address: str = ""
    address: str = ""  # the dashboard: what `sentiray submit --address` takes

    # ----------------------------------------------------------------------- starting nodes

    def _ports(self) -> list[str]:
        return [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            "--block",
        ]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Node:
        temp = tempfile.mkdtemp(prefix=f"rn{name}", dir="/tmp")  # short: socket paths have a length limit
        resources = json.dumps({f"node_{name}": 1})
        cmd = [str(BIN / "ray"), "start", *args, f"--temp-dir={temp}", f"--resources={resources}", *self._ports()]
        with open(Path(temp) / "ray-start.log", "w") as log:  # read when the node fails to start
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, proc, temp)
        self.nodes[name] = node
        return node

    def start_head(self) -> Node:
        ensure_token_file()
        self.env.update(FAST_HEALTH_CHECK)
        port, dash = free_port(), free_port()
        start = time.monotonic()
        node = self._spawn(
            "head",
            [
                "--head",
                f"--port={port}",
                f"--dashboard-port={dash}",
                "--dashboard-host=127.0.0.1",
                "--num-cpus=0",
                f"--ray-client-server-port={free_port()}",
            ],
            self.env,
        )
        self.gcs_address, self.address = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}"
        wait_for_http(f"{self.address}/api/version", timeout=120, proc=node.proc, headers=auth_headers())
        self._wait_alive(node, start)
        return node

    def add_worker(self, name: str, num_cpus: int = 1) -> Node:
        """A worker node joining the head; returns once the cluster lists it alive."""
        return self.add_workers([name], num_cpus)[0]

    def add_workers(self, names: list[str], num_cpus: int = 1) -> list[Node]:
        """Worker nodes started together (their start-ups overlap); returns once all are alive."""
        start = time.monotonic()
        env = {**self.env, "RAY_AUTH_MODE": "token"}  # `ray start --address` does not turn it on by itself
        nodes = [self._spawn(name, [f"--address={self.gcs_address}", f"--num-cpus={num_cpus}"], env) for name in names]
        for node in nodes:
            self._wait_alive(node, start)
        return nodes

    def _wait_alive(self, node: Node, start: float, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                log = (Path(node.temp_dir) / "ray-start.log").read_text()[-3000:]
                raise RuntimeError(f"node {node.name} exited with {node.proc.returncode} while starting:\n{log}")
            for n in self.alive_nodes():
                if n["resources_total"].get(node.resource):
                    node.node_id, node.started_s = n["node_id"], time.monotonic() - start
                    return
            time.sleep(0.5)
        raise TimeoutError(f"node {node.name} did not join within {timeout}s")

    # ----------------------------------------------------------------------- looking and killing

    def state(self):
        """Ray's state API (nodes, actors, tasks) of this cluster."""
        from sentiray.cluster.submit import state_client

        return state_client(self.address)

    def alive_nodes(self) -> list[dict]:
        from ray.util.state.common import ListApiOptions, StateResource

        nodes = self.state().list(
            StateResource.NODES,
            options=ListApiOptions(filters=[("state", "=", "ALIVE")]),
            raise_on_missing_output=False,
        )
        return [n if isinstance(n, dict) else n.__dict__ for n in nodes]

    def node_name(self, node_id: str) -> str | None:
        """Which of this cluster's nodes (head, a, b, ...) a Ray node id is."""
        return next((n.name for n in self.nodes.values() if n.node_id == node_id), None)

    def kill_raylet(self, name: str) -> float:
        """SIGKILL the node's raylet, as a lost machine: its workers die with it. Returns the
        time (monotonic) of the kill; the rest of the node's processes are stopped too."""
        node = self.nodes.pop(name)
        psutil.Process(node.raylet_pid()).kill()
        killed = time.monotonic()
        stop_node(node.proc)
        shutil.rmtree(node.temp_dir, ignore_errors=True)
        return killed

    def wait_dead(self, node_id: str, timeout: float = 60) -> float:
        """Seconds until the cluster no longer lists ``node_id`` alive."""
        start = time.monotonic()
        while any(n["node_id"] == node_id for n in self.alive_nodes()):
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"node {node_id} still alive after {timeout}s")
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:  # workers first: no reconnect attempts
            node = self.nodes.pop(name, None)
            if node is not None:
                stop_node(node.proc)
                shutil.rmtree(node.temp_dir, ignore_errors=True)
