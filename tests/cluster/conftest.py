"""Ray clusters for the cluster tests: one `ray start --head` node for job submission and
pipelines of jobs, and a multi-node cluster (head + two worker nodes) for the modules that
need one."""

from __future__ import annotations

import pytest

from tests.cluster.helpers import ray_head
from tests.cluster.multinode import MultiNodeCluster


@pytest.fixture(scope="package")
def head():
    with ray_head(num_cpus=2) as (address, env):
        yield address, env


@pytest.fixture(scope="module")
def multinode(s3_server):
    """A head (no CPUs) and worker nodes ``a`` and ``b`` (2 CPUs each) on loopback, started once
    per module that asks for it. Tests that kill a node leave a replacement behind (named
    ``c``, ``d``, ...): two worker nodes stay alive between tests."""
    cluster = MultiNodeCluster()
    try:
        cluster.start_head()
        cluster.add_workers(["a", "b"], num_cpus=2)
        yield cluster
    finally:
        cluster.stop()
