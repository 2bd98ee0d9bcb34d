"""Building and starting the Serve application; the ``sentiray serve`` command.

Three ways to run the same application:

- ``serve run serve/student.yaml`` / ``serve deploy serve/student.yaml`` (Ray's CLI):
  the YAML names ``import_path: sentiray.serving.app:build_app`` and its ``args``;
- ``sentiray serve serve/student.yaml [key=value ...]``: the same file, validated here
  first (a wrong arg fails at once, naming the field), deployed the way ``serve run``
  deploys it; ``key=value`` overrides the args of every sentiray application in it;
- ``sentiray run jobs/serve.yaml`` (a job YAML with ``stage: serve``): :func:`run`.

The application is one deployment, ``SentimentModel``: each autoscaled replica serves HTTP
(the family's endpoints, the OpenAI routes) and runs the model (:mod:`sentiray.serving.server`
says why). Before deploying, every model source is checked where the command runs (a
missing folder, a registered name without versions, an s3:// prefix without a model fail
at once, exit 2) and the family whose routes are mounted is read from the model's manifest.
Options given in code here are defaults; a ``deployments:`` entry of a Serve YAML replaces
any of them (as a whole: an ``autoscaling_config`` there must list every field it wants
different from Serve's defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from pydantic import ValidationError

from sentiray.config import (
    ConfigError,
    JobConfig,
    ServeAppConfig,
    apply_overrides,
    format_validation_error,
)

IMPORT_PATH = "sentiray.serving.app:build_app"
MODEL_DEPLOYMENT = "SentimentModel"
DEPLOY_TIMEOUT_S = 600
# Args that are also the deployment's user_config (changeable without a restart).
USER_CONFIG_KEYS = ("model", "max_batch_size", "batch_wait_timeout_s")
# Options the replica enforces itself (admission, answered 503 in the API's error shape),
# so they are args, not Serve options of a deployments: entry.
REPLICA_ARGS = ("max_ongoing_requests", "max_queued_requests")


def app_config(args: dict[str, Any] | ServeAppConfig, source: str = "serve application args") -> ServeAppConfig:
    """Validated application args; a bad one raises :class:`ConfigError` naming the field."""
    if isinstance(args, ServeAppConfig):
        return ServeAppConfig.model_validate(args.model_dump())
    try:
        return ServeAppConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def checked_config(
    args: dict[str, Any] | ServeAppConfig, source: str = "serve application args", local: bool = True
) -> ServeAppConfig:
    """The args validated, every model source checked, ``family`` filled in from the manifest and
    the family's endpoint settings validated: all that can fail before a replica starts."""
    from sentiray import families
    from sentiray.serving.endpoints import endpoint_settings
    from sentiray.serving.sources import resolve_family

    cfg = app_config(args, source)
    family = resolve_family(cfg, source, local=local)
    if family is not None:
        endpoint_settings(tuple(families.family_class(family).endpoints), cfg, source)
    return cfg.model_copy(update={"family": family})


def _serve_limits(cfg: ServeAppConfig) -> tuple[int, int]:
    """Serve's own max_ongoing / max_queued for the deployment. The replica admits requests
    itself (503 + Retry-After in the API's error shape), so Serve must hand every request to a
    replica: its limit has room above the replica's (refusals pass through the replica too),
    and the proxy queues only while every replica is that full."""
    capacity = cfg.capacity
    if capacity is None:
        return 100_000, -1
    return 2 * capacity + 16, -1


def build_app(args: dict[str, Any] | ServeAppConfig):
    """The Serve application for ``args`` (a :class:`ServeAppConfig` as a dict).

    The target of ``import_path`` in a Serve YAML; also called from Python. A family left
    out of the args is read from the model's manifest here.
    """
    from ray.serve.config import BackpressureConfig

    from sentiray.serving.server import SentimentModel

    cfg = app_config(args)
    if cfg.family is None:
        cfg = checked_config(cfg)
    max_ongoing, max_queued = _serve_limits(cfg)
    return SentimentModel.options(
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s,
        },
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued,
        backpressure_config=BackpressureConfig(retry_after_s=cfg.retry_after_s),
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        logging_config={"enable_access_log": cfg.access_log},
        user_config={key: getattr(cfg, key) for key in USER_CONFIG_KEYS},
    ).bind(cfg.model_dump(mode="json"))


# --------------------------------------------------------------------------- starting Serve


def start_serve(host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve's HTTP proxy (or find the running one) and return its base URL.

    Serve's HTTP options are per cluster: when Serve already runs, it keeps its own host and
    port, and the URL returned is that one.
    """
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    return serve_url()


def serve_url() -> str:
    """The base URL of the running Serve proxy (loopback when it listens on every interface)."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    shown = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    return f"http://{shown}:{http.port}"


def deployed_times() -> dict[str, float]:
    """When each running application was last deployed (to tell a redeploy has been taken up)."""
    from ray import serve

    return {name: app.last_deployed_time_s for name, app in serve.status().applications.items()}


def wait_running(names: list[str], timeout_s: float = DEPLOY_TIMEOUT_S, before: dict[str, float] | None = None) -> None:
    """Wait until every named application is RUNNING; a failed one raises with Serve's message.

    ``before`` (from :func:`deployed_times`, taken before deploying) makes an application
    that already ran count only once the controller has taken up the new config.
    """
    from ray import serve

    before = before or {}
    deadline = time.monotonic() + timeout_s
    while True:
        apps = {
            n: a
            for n, a in serve.status().applications.items()
            if n not in before or a.last_deployed_time_s != before[n]
        }
        failed = {n: apps[n] for n in names if n in apps and apps[n].status in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            lines = []
            for name, app in failed.items():
                lines.append(f"application {name!r}: {app.status}: {app.message}")
                for dep_name, dep in app.deployments.items():
                    if dep.message:
                        lines.append(f"  {dep_name}: {dep.message}")
            raise RuntimeError("\n".join(lines))
        if all(n in apps and apps[n].status == "RUNNING" for n in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"applications {names} not running after {timeout_s:.0f} s: "
                + ", ".join(f"{n}={apps[n].status if n in apps else 'pending'}" for n in names)
            )
        time.sleep(0.5)


def _with_driver_tracking(args: dict[str, Any]) -> dict[str, Any]:
    """Replicas reading models:/ need the driver's MLflow store, unless the args name one."""
    if not args.get("tracking_uri") and os.environ.get("MLFLOW_TRACKING_URI"):
        return {**args, "tracking_uri": os.environ["MLFLOW_TRACKING_URI"]}
    return args


def _block(names: list[str]) -> None:
    from ray import serve

    print("serving; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(5)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
        for name in names:
            serve.delete(name)


def route_paths(cfg: ServeAppConfig) -> list[str]:
    """The routes an application of this config offers (its family's, then the platform's)."""
    from sentiray import families

    family = families.family_class(cfg.family or "mulcot")
    paths = [e.path for e in family.endpoints]
    if family.predictor_class.supports_chat:
        paths += ["/v1/chat/completions", "/v1/models"]
    return paths


def run(job: JobConfig) -> dict[str, Any]:
    """Stage ``serve`` of a job YAML: deploy the app at ``serve.host:port`` + ``route_prefix``."""
    from ray import serve

    from sentiray import runtime

    cfg = job.serve
    fields = set(ServeAppConfig.model_fields)
    args = _with_driver_tracking({k: v for k, v in cfg.model_dump(mode="json").items() if k in fields})
    app_cfg = checked_config(args, "serve", local=not (job.ray.address or os.environ.get("RAY_ADDRESS")))
    runtime.ensure_ray(job.ray)
    url = start_serve(cfg.host, cfg.port)
    serve.run(build_app(app_cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    wait_running([cfg.app_name])
    endpoint = url + cfg.route_prefix.rstrip("/")
    print(
        f"{cfg.app_name}: {' '.join(endpoint + p for p in route_paths(app_cfg))}  (models {', '.join(app_cfg.sources)})",
        flush=True,
    )
    summary = {"app": cfg.app_name, "url": endpoint, "models": list(app_cfg.sources), "family": app_cfg.family}
    if cfg.blocking:
        _block([cfg.app_name])
    return summary


def load_serve_config(path: str, overrides: list[str] | None = None, local_cluster: bool = True):
    """A Serve YAML as Ray's ``ServeDeploySchema``, our applications' args validated, checked
    (every model source; the family from its manifest) and overridden.

    ``key=value`` overrides apply to the args of every sentiray application; an overridden
    user_config key (model, max_batch_size, batch_wait_timeout_s) is changed in the
    deployment's ``user_config`` too, since that wins over args at run time. A local folder
    is checked only for a local cluster (a remote one has its own disk).
    """
    from ray.serve.schema import ServeDeploySchema

    from sentiray import config
    from sentiray.serving.sources import resolve_family

    try:
        schema = ServeDeploySchema.model_validate(config.load_raw(path))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None
    ours = [a for a in schema.applications if a.import_path == IMPORT_PATH]
    if overrides and not ours:
        raise ConfigError(f"{path}: overrides {overrides} given, but no application imports {IMPORT_PATH}")
    overridden = {keys[0] for keys, _ in config.parse_overrides(overrides or [])}
    for app in ours:
        source = f"{path}: application {app.name!r} args"
        _check_deployments(app, path)
        args = _with_driver_tracking(apply_overrides(app.args or {}, overrides or []))
        cfg = checked_config(args, source, local=local_cluster)
        if cfg.family:
            args = {**args, "family": cfg.family}  # read from the manifest here, so replicas need not
        app.args = args
        for dep in app.deployments:
            if dep.name == MODEL_DEPLOYMENT and isinstance(dep.user_config, dict):
                for key in overridden & set(USER_CONFIG_KEYS) & set(dep.user_config):
                    dep.user_config[key] = getattr(cfg, key)
                swap = dep.user_config.get("model")
                if swap and swap != cfg.model:  # it wins over args.model: it must hold a model too
                    swap_cfg = cfg.model_copy(update={"model": swap, "family": None})
                    if cfg.family and resolve_family(
                        swap_cfg, f"{path}: application {app.name!r} user_config", local=local_cluster
                    ) not in (None, cfg.family):
                        raise ConfigError(
                            f"{path}: application {app.name!r}: user_config.model {swap!r} is not a "
                            f"{cfg.family!r} model, and the routes are that family's"
                        )
    return schema


def _check_deployments(app: Any, path: str) -> None:
    """Deployment entries our application has (one), with no options the replica enforces itself."""
    for dep in app.deployments:
        if dep.name != MODEL_DEPLOYMENT:
            hint = (
                " (the ingress is gone: each SentimentModel replica serves HTTP itself; drop this entry)"
                if dep.name == "Ingress"
                else ""
            )
            raise ConfigError(
                f"{path}: application {app.name!r} has no deployment {dep.name!r}; "
                f"it has one, {MODEL_DEPLOYMENT!r}{hint}"
            )
        given = [k for k in REPLICA_ARGS if k in dep.model_fields_set]
        if given:
            raise ConfigError(
                f"{path}: application {app.name!r}, deployment {dep.name!r}: set {', '.join(given)} in "
                "args (the replica admits requests itself, so that an overload is a 503 in the API's error shape)"
            )


def serve_config_file(
    path: str, overrides: list[str] | None = None, address: str | None = None, blocking: bool = True
) -> dict[str, Any]:
    """Deploy a Serve YAML (``applications: [...]``) as ``serve run`` does, after validating our args.

    A job YAML (``stage: serve``) goes to :func:`run` instead.
    """
    import ray
    from ray.serve._private import api as serve_api

    from sentiray import config, runtime
    from sentiray.config import RayConfig

    if "applications" not in config.load_raw(path):
        job = config.load(path, overrides)
        if job.stage != "serve":
            raise ConfigError(f"{path} is a {job.stage!r} job and not a Serve config (no 'applications')")
        if address:
            job.ray.address = address
        job.serve.blocking = blocking
        return run(job)

    schema = load_serve_config(path, overrides, local_cluster=not (address or os.environ.get("RAY_ADDRESS")))
    runtime.ensure_ray(RayConfig(address=address))
    # What `serve run FILE` does: start Serve with the file's HTTP options, deploy the apps.
    serve_api.serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    from ray.serve.context import _get_global_client

    before = deployed_times()
    _get_global_client().deploy_apps(schema, _blocking=False)
    names = [a.name for a in schema.applications]
    wait_running(names, before=before)
    base = serve_url()
    urls = {a.name: base + (a.route_prefix or "/").rstrip("/") for a in schema.applications}
    for name, url in urls.items():
        print(f"{name}: {url}", flush=True)
    summary = {"apps": urls, "ray_address": ray.get_runtime_context().gcs_address}
    if blocking:
        _block(names)
    return summary


# --------------------------------------------------------------------------- command line


def cmd_serve(args: argparse.Namespace) -> int:
    serve_config_file(args.config, args.overrides, address=args.address, blocking=not args.no_block)
    return 0


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="put a model behind an autoscaled HTTP endpoint (Ray Serve)",
        description="Deploy a Serve YAML (the file `serve run` takes, e.g. serve/student.yaml) or a job YAML "
        "with stage: serve. key=value overrides set the args of the sentiray applications.",
    )
    p.add_argument("config", help="serve/student.yaml (Serve config) or a job YAML with stage: serve")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override application args (values parsed as YAML)"
    )
    p.add_argument("--address", help="Ray cluster to deploy to (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--no-block", action="store_true", help="return once the applications run, leaving them deployed")
    p.set_defaults(func=cmd_serve)
