"""One `ray start --head` node for every cluster test (job submission, pipelines of jobs)."""

from __future__ import annotations

import pytest

from tests.cluster.helpers import ray_head


@pytest.fixture(scope="package")
def head():
    with ray_head(num_cpus=2) as (address, env):
        yield address, env
