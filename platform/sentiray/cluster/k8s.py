"""KubeRay manifests rendered from sentiray's own files, so that nothing is copied by hand.

* A Ray Serve config (``serve/X.yaml``, what ``serve run`` and ``serve deploy`` take) becomes a
  RayService whose ``spec.serveConfigV2`` is that file's text, unchanged.
* A job YAML (``jobs/X.yaml``) becomes a RayJob that runs ``sentiray run jobs/X.yaml [overrides]``
  on a cluster created for the job and deleted after it; a pipeline YAML (``jobs/pipeline.yaml``)
  one that runs ``sentiray pipeline jobs/pipeline.yaml [overrides]``: every stage on one cluster.

Both take their cluster from ``k8s/raycluster.yaml``: images, resources and worker groups are
written once, there. Each rendered manifest records the command that made it (an annotation),
so a test can render it again and compare.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import yaml

# Where the image (Dockerfile) keeps jobs/, serve/ and tune/. A RayJob uploads this folder as
# its working directory, so `sentiray run jobs/X.yaml` reads the image's copy of the file.
IMAGE_WORKDIR = "/home/ray/sentiray"
DEFAULT_CLUSTER_CONFIG = "k8s/raycluster.yaml"
RENDERED_BY = "sentiray.io/rendered-by"
SOURCE = "sentiray.io/source"
# RayJob defaults: the job's cluster is deleted ten minutes after the job ends (time to read
# its logs), and a failed job is retried twice on a fresh cluster (stages are resumable).
TTL_SECONDS_AFTER_FINISHED = 600
BACKOFF_LIMIT = 2

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RenderError(ValueError):
    """A source file or the cluster config cannot become a manifest; the message says why."""


# --------------------------------------------------------------------------- reading the sources


def _read_yaml(path: str | Path, what: str) -> tuple[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"{what} {path} does not exist")
    text = path.read_text()
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"{what} {path} is not valid YAML: {exc}") from None


def load_cluster(path: str | Path = DEFAULT_CLUSTER_CONFIG) -> dict[str, Any]:
    """The RayCluster manifest whose ``spec`` every rendered RayJob and RayService runs on."""
    if not Path(path).is_file():
        raise RenderError(f"cluster config {path} does not exist")
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"cluster config {path} is not valid YAML: {exc}") from None
    doc = docs[0] if len(docs) == 1 else None
    if not isinstance(doc, dict) or doc.get("kind") != "RayCluster" or doc.get("apiVersion") != "ray.io/v1":
        found = ", ".join(str(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in docs) or "nothing"
        raise RenderError(f"cluster config {path} must be one ray.io/v1 RayCluster manifest (found: {found})")
    if not isinstance(doc.get("spec"), dict) or "headGroupSpec" not in doc["spec"]:
        raise RenderError(f"cluster config {path}: spec.headGroupSpec is missing")
    check_fault_tolerance(doc, str(path))
    return doc


FT_ANNOTATION = "ray.io/ft-enabled"


def check_fault_tolerance(cluster: dict[str, Any], source: str) -> None:
    """GCS fault tolerance (surviving a head restart) as KubeRay 1.7 accepts it: configured by
    ``spec.gcsFaultToleranceOptions`` alone. KubeRay refuses a cluster that also uses the older
    ways (the ``ray.io/ft-enabled`` annotation, ``redis-password`` in rayStartParams, the
    REDIS_PASSWORD / RAY_external_storage_namespace variables on the head), and one that sets
    RAY_REDIS_ADDRESS without the options; the schemas cannot see any of that."""
    spec = cluster["spec"]
    options = spec.get("gcsFaultToleranceOptions")
    annotations = (cluster.get("metadata") or {}).get("annotations") or {}
    head = spec["headGroupSpec"]
    env = {e.get("name") for c in _containers(head)[:1] for e in c.get("env") or []}
    if options is None:
        if "RAY_REDIS_ADDRESS" in env:
            raise RenderError(
                f"cluster config {source}: RAY_REDIS_ADDRESS on the head turns GCS fault tolerance on "
                "without spec.gcsFaultToleranceOptions, which KubeRay refuses: set the options instead"
            )
        return
    if FT_ANNOTATION in annotations:
        raise RenderError(
            f"cluster config {source}: the {FT_ANNOTATION} annotation and spec.gcsFaultToleranceOptions "
            "are both set; KubeRay accepts only the options: drop the annotation"
        )
    if "redis-password" in (head.get("rayStartParams") or {}):
        raise RenderError(
            f"cluster config {source}: redis-password in rayStartParams; with gcsFaultToleranceOptions "
            "KubeRay wants gcsFaultToleranceOptions.redisPassword (from a Secret)"
        )
    for name in ("REDIS_PASSWORD", "RAY_external_storage_namespace"):
        if name in env:
            raise RenderError(
                f"cluster config {source}: {name} on the head; with gcsFaultToleranceOptions KubeRay "
                "wants the options' redisPassword / externalStorageNamespace instead"
            )
    host = str(options.get("redisAddress", "")).removeprefix("redis://").rsplit(":", 1)[0]
    if not host or host in _LOOPBACK:
        raise RenderError(
            f"cluster config {source}: gcsFaultToleranceOptions.redisAddress is "
            f"{options.get('redisAddress')!r}: it must name the Redis Service (k8s/redis.yaml), which "
            "outlives the head pod"
        )


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def serve_port(cluster_spec: dict[str, Any]) -> int | None:
    """The head container's port named ``serve``: where KubeRay's serve Service sends requests."""
    for container in _containers(cluster_spec["headGroupSpec"])[:1]:
        for port in container.get("ports") or []:
            if port.get("name") == "serve":
                return int(port["containerPort"])
    return None


def check_serve_config(text: str, source: str, cluster_spec: dict[str, Any]) -> dict[str, Any]:
    """Parse a Serve config and check it with Ray Serve's own schema and against the cluster:
    what `serve deploy` would reject, and what would deploy but never answer on Kubernetes."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RenderError(f"Serve config {source} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list) or not doc["applications"]:
        raise RenderError(
            f"Serve config {source} must be a multi-application config: a mapping with a non-empty "
            "`applications` list (name, route_prefix, import_path, args, deployments)"
        )
    try:
        ServeDeploySchema.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RenderError(f"Serve config {source} is not a valid Ray Serve config: {problems}") from None
    # sentiray's own applications: their args as `sentiray serve` checks them (unknown keys are errors).
    from sentiray.config import ServeAppConfig, format_validation_error

    for app in doc["applications"]:
        if str(app.get("import_path", "")).startswith("sentiray."):
            try:
                ServeAppConfig.model_validate(app.get("args") or {})
            except ValidationError as exc:
                raise RenderError(
                    format_validation_error(exc, f"Serve config {source}: application {app.get('name')!r} args")
                ) from None
    http = doc.get("http_options") or {}
    host, port = http.get("host", "0.0.0.0"), int(http.get("port", 8000))
    if host in _LOOPBACK:
        raise RenderError(
            f"Serve config {source}: http_options.host is {host}, so the proxy would listen on the pod's "
            "loopback and KubeRay's serve Service could never reach it. Use 0.0.0.0 (Serve's default)."
        )
    expected = serve_port(cluster_spec)
    if expected is None:
        raise RenderError(
            "the cluster config's head container has no port named `serve`: KubeRay routes the endpoint to it"
        )
    if port != expected:
        raise RenderError(
            f"Serve config {source}: http_options.port is {port} but the cluster's `serve` container port is "
            f"{expected}: KubeRay's serve Service would miss the proxy"
        )
    return doc


def _project_path(path: str | Path) -> str:
    """A job YAML's path as the RayJob names it: relative to the project root (this directory),
    which the image mirrors under IMAGE_WORKDIR."""
    rel = os.path.relpath(os.path.abspath(path))
    if rel.startswith(".."):
        raise RenderError(
            f"{path} is outside this project: a RayJob runs `sentiray run PATH` in the image's {IMAGE_WORKDIR}, "
            "so render from the project root with a path such as jobs/data.yaml"
        )
    return Path(rel).as_posix()


def _name(name: str | None, source: str | Path) -> str:
    name = name or "sentiray-" + re.sub(r"[^a-z0-9-]+", "-", Path(source).stem.lower()).strip("-")
    # KubeRay derives Service and pod names from it: keep it a short DNS label.
    if len(name) > 40 or not _DNS_LABEL.match(name):
        raise RenderError(
            f"name {name!r} must be a DNS label (a-z, 0-9, '-', starting with a letter) of at most 40 characters"
        )
    return name


def _metadata(name: str, component: str, source: str, command: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"app.kubernetes.io/name": "sentiray", "app.kubernetes.io/component": component},
        "annotations": {SOURCE: source, RENDERED_BY: command},
    }


# --------------------------------------------------------------------------- rendering


def render_rayservice(
    serve_path: str | Path, cluster: dict[str, Any], *, name: str | None = None, command: str = ""
) -> dict[str, Any]:
    """A RayService: ``serveConfigV2`` is the Serve file's text, the cluster is ``cluster``'s spec."""
    text, _ = _read_yaml(serve_path, "Serve config")
    check_serve_config(text, str(serve_path), cluster["spec"])
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(_name(name, serve_path), "endpoint", Path(serve_path).as_posix(), command),
        "spec": {
            # The file's own text: one source of truth for `serve run` locally and for KubeRay.
            "serveConfigV2": text,
            "rayClusterConfig": copy.deepcopy(cluster["spec"]),
        },
    }


def render_rayjob(
    job_path: str | Path,
    overrides: list[str],
    cluster: dict[str, Any],
    *,
    name: str | None = None,
    entrypoint_num_cpus: float = 1.0,
    entrypoint_num_gpus: float = 0.0,
    command: str = "",
) -> dict[str, Any]:
    """A RayJob running ``sentiray run JOB [overrides]`` on its own cluster of ``cluster``'s spec."""
    from sentiray import config

    rel = _project_path(job_path)
    is_pipeline = "stages" in config.load_raw(job_path)
    try:  # a wrong config or override fails here, not on the cluster
        if is_pipeline:
            from sentiray import pipeline

            pipeline.load(job_path, overrides)  # every stage of it
        else:
            config.load(job_path, overrides)
    except config.ConfigError as exc:
        raise RenderError(str(exc)) from None
    # A pipeline runs all its stages from the job's driver, joined to the job's cluster.
    argv = ["sentiray", "pipeline", rel] if is_pipeline else ["sentiray", "run", rel]
    spec: dict[str, Any] = {
        "entrypoint": shlex.join([*argv, *overrides]),
        # No secrets here: S3 keys, the MLflow address and tokens reach every pod from the
        # cluster spec's Secrets, so they never show in the job's runtime environment.
        "runtimeEnvYAML": yaml.safe_dump({"working_dir": IMAGE_WORKDIR}, sort_keys=False),
        "metadata": {"sentiray_config": rel},
        "entrypointNumCpus": entrypoint_num_cpus,
    }
    if entrypoint_num_gpus:
        spec["entrypointNumGpus"] = entrypoint_num_gpus
    spec.update(
        {
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "backoffLimit": BACKOFF_LIMIT,
            "rayClusterSpec": copy.deepcopy(cluster["spec"]),
        }
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _metadata(_name(name, job_path), "job", rel, command),
        "spec": spec,
    }


def render_command(
    source: str,
    overrides: list[str],
    *,
    cluster_config: str,
    name: str | None,
    entrypoint_num_cpus: float,
    entrypoint_num_gpus: float,
) -> str:
    """The command line that renders the same manifest again (recorded in it)."""
    args = ["sentiray", "k8s", "render", source, *overrides]
    if cluster_config != DEFAULT_CLUSTER_CONFIG:
        args += ["--cluster-config", cluster_config]
    if name:
        args += ["--name", name]
    if entrypoint_num_cpus != 1.0:
        args += ["--entrypoint-num-cpus", f"{entrypoint_num_cpus:g}"]
    if entrypoint_num_gpus:
        args += ["--entrypoint-num-gpus", f"{entrypoint_num_gpus:g}"]
    return shlex.join(args)


def render(
    source: str | Path,
    overrides: list[str] | None = None,
    *,
    cluster_config: str = DEFAULT_CLUSTER_CONFIG,
    name: str | None = None,
    entrypoint_num_cpus: float = 1.0,
    entrypoint_num_gpus: float = 0.0,
) -> dict[str, Any]:
    """The manifest for ``source``: a RayService for a Serve config, a RayJob for a job YAML."""
    overrides = list(overrides or [])
    _, doc = _read_yaml(source, "source")
    cluster = load_cluster(cluster_config)
    command = render_command(
        str(source),
        overrides,
        cluster_config=cluster_config,
        name=name,
        entrypoint_num_cpus=entrypoint_num_cpus,
        entrypoint_num_gpus=entrypoint_num_gpus,
    )
    if isinstance(doc, dict) and "applications" in doc:
        if overrides:
            raise RenderError("overrides apply to job YAMLs only: a Serve config is embedded as it is")
        return render_rayservice(source, cluster, name=name, command=command)
    if isinstance(doc, dict) and ("stage" in doc or "stages" in doc):
        return render_rayjob(
            source,
            overrides,
            cluster,
            name=name,
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus,
            command=command,
        )
    raise RenderError(
        f"{source} is neither a Serve config (with `applications`) nor a job YAML (with `stage`) "
        "nor a pipeline (with `stages`)"
    )


# --------------------------------------------------------------------------- writing


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, runtimeEnvYAML) as literal blocks, readable in review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(doc: dict[str, Any]) -> str:
    command = doc["metadata"]["annotations"][RENDERED_BY]
    header = (
        f"# Generated by `{command}`.\n"
        f"# Do not edit: change {doc['metadata']['annotations'][SOURCE]} or the cluster config, then render again.\n"
    )
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


def render_file(source: str | Path, overrides: list[str] | None = None, **kwargs: Any) -> str:
    return dump(render(source, overrides, **kwargs))


def write_atomically(path: str | Path, text: str) -> None:
    """Write via a temporary file and a rename: a failed render never leaves half a manifest."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
