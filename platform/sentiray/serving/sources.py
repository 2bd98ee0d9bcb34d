"""Model sources: checked on the driver before deploying, loaded as a family's predictor in a replica.

A source is ``models:/name/version``, ``models:/name@alias``, ``models:/name/latest``,
``runs:/<run>/<path>``, an ``s3://`` prefix or a local folder. :func:`check_source` tells
``sentiray serve`` (and ``build_app``) what a source holds without downloading the model:
its family and task from the manifest (``sentiray.json``) or the registered pyfunc's
config, and raises :class:`ConfigError` naming the field when it holds no model, so a
wrong source fails in a second instead of in a replica that Serve restarts for minutes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from sentiray.config import ConfigError, ServeAppConfig

logger = logging.getLogger("ray.serve")

# What marks a folder as a model: our manifest, a Hugging Face config, or a PEFT adapter.
MODEL_FILES = ("sentiray.json", "config.json", "adapter_config.json")


@dataclass
class LoadedModel:
    """A loaded predictor and what is said about it (``info``: id, name, version; never the URI)."""

    predictor: Any  # sentiray.families.base.Predictor
    info: dict[str, Any]
    uri: str
    folder: str
    context: Any = None  # the endpoints' ParseContext, built once per model
    tokenizer: Any = None  # for streamed chat, loaded on first use
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the registry


@contextlib.contextmanager
def _registry(tracking_uri: str | None):
    """An MlflowClient on the given store (default: MLFLOW_TRACKING_URI, else ./runs/mlflow);
    the process-wide tracking URI is restored afterwards."""
    import mlflow

    from sentiray import tracking

    uri = tracking_uri or tracking.tracking_uri()
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield mlflow.MlflowClient(), uri
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _pin(client: Any, rest: str, store: str) -> tuple[str, str]:
    """``name/version``, ``name/latest`` or ``name@alias`` -> (name, version number)."""
    from mlflow.exceptions import MlflowException

    name, alias = rest.split("@", 1) if "@" in rest else (rest.partition("/")[0], None)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ValueError(f"no registered model {name!r} in the MLflow store {store}") from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if not versions:
        raise ValueError(
            f"registered model {name!r} has no versions yet in {store} (train one first, "
            "e.g. `sentiray train jobs/student.yaml`, or `sentiray demo`)"
        )
    if alias is not None:
        try:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            raise ValueError(f"registered model {name!r} has no alias {alias!r}") from None
    version = rest.partition("/")[2]
    if version in ("", "latest"):
        return name, str(versions[-1])
    if not version.isdigit() or int(version) not in versions:
        raise ValueError(
            f"registered model {name!r} has no version {version!r} (versions: {', '.join(map(str, versions))})"
        )
    return name, version


def resolve_source(uri: str, tracking_uri: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(local folder, {name, version})`` for any source (downloads remote ones).

    A registry alias or ``latest`` is pinned to its version number first, so the files
    loaded and the version reported are the same even if the alias moves meanwhile."""
    from sentiray.models import registry

    if uri.startswith("models:/"):
        with _registry(tracking_uri) as (client, store):
            name, version = _pin(client, uri[len("models:/") :].strip("/"), store)
            folder = registry.resolve_model_uri(f"models:/{name}/{version}")
        return folder, {"name": name, "version": version}
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].partition("/")
        with _registry(tracking_uri):
            folder = registry.resolve_model_uri(uri)
        return folder, {"name": path.strip("/").split("/")[-1] or run_id, "version": run_id}
    folder = registry.resolve_model_uri(uri)
    return folder, {"name": os.path.basename(uri.rstrip("/")) or uri, "version": None}


# --------------------------------------------------------------------------- checks on the driver


def _folder_manifest(uri: str, where: str) -> dict[str, Any]:
    """The manifest of a folder or s3:// prefix holding a model; ConfigError when it holds none."""
    from sentiray import families
    from sentiray.data import storage

    try:
        present = [name for name in MODEL_FILES if storage.exists(storage.join(uri, name))]
    except Exception as exc:  # noqa: BLE001 - s3fs: no bucket, no credentials, no endpoint
        raise ConfigError(f"{where}: cannot read {uri} ({type(exc).__name__}: {exc})") from None
    if not present:
        raise ConfigError(
            f"{where}: {uri} holds no model (none of {', '.join(MODEL_FILES)} there); "
            "give the folder the training stage exported"
        )
    if families.MANIFEST in present:
        return json.loads(storage.read_text(storage.join(uri, families.MANIFEST)))
    return {"family": "mulcot"}  # a plain HF folder: read_manifest's default


def _registered_manifest(uri: str, where: str, tracking_uri: str | None) -> dict[str, Any]:
    import mlflow

    try:
        with _registry(tracking_uri) as (client, store):
            if uri.startswith("models:/"):
                name, version = _pin(client, uri[len("models:/") :].strip("/"), store)
                uri = f"models:/{name}/{version}"
            flavor = mlflow.models.get_model_info(uri).flavors.get("python_function", {})
    except ValueError as exc:
        raise ConfigError(f"{where}: {uri}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - mlflow: no such run or artifact, store unreachable
        raise ConfigError(f"{where}: cannot resolve {uri} ({type(exc).__name__}: {exc})") from None
    # registry.log_model records the family; models registered before families are MulCoT.
    return {"family": "mulcot", **(flavor.get("config") or {})}


def check_source(uri: str, where: str, tracking_uri: str | None = None, local: bool = True) -> dict[str, Any] | None:
    """What a source holds (its manifest, at least ``family``), read without loading the model.

    Raises :class:`ConfigError` naming ``where`` when the source holds no model. None when
    it cannot be checked from here: a local path meant for a remote cluster (``local=False``)."""
    from sentiray.data import storage

    if uri.startswith(("models:/", "runs:/")):
        return _registered_manifest(uri, where, tracking_uri)
    if storage.is_remote(uri):
        return _folder_manifest(uri, where)
    if not local:
        return None
    path = os.path.abspath(uri.removeprefix("file://"))
    if not os.path.isdir(path):
        raise ConfigError(f"{where}: no folder {uri!r} (give a models:/ URI, an s3:// prefix or a folder)")
    return _folder_manifest(path, where)


def resolve_family(cfg: ServeAppConfig, source: str = "serve application args", local: bool = True) -> str | None:
    """The family of the app's model(s), checking every source; ConfigError on a mismatch."""
    from sentiray import families

    found: dict[str, str] = {}
    for model_id, uri in cfg.sources.items():
        where = f"invalid config {source}:\n  " + (f"models.{model_id}" if cfg.models else "model")
        manifest = check_source(uri, where, cfg.tracking_uri, local)
        if manifest is not None:
            found[model_id] = manifest.get("family", "mulcot")
    names = set(found.values())
    if len(names) > 1:
        raise ConfigError(
            f"invalid config {source}:\n  models: one application serves one family's endpoints; "
            f"these models are of several: {found}"
        )
    family = cfg.family or (names.pop() if names else None)
    if family is not None:
        where = "family" if cfg.family else ("models" if cfg.models else "model") + " (its manifest's family)"
        try:
            families.family_class(family)  # an unknown family fails here, naming the known ones
        except ConfigError as exc:
            raise ConfigError(
                f"invalid config {source}:\n  {where}: {str(exc).removeprefix('train.family: ')}"
            ) from None
        if cfg.family and found and set(found.values()) != {cfg.family}:
            raise ConfigError(
                f"invalid config {source}:\n  family: {cfg.family!r}, but the model's manifest says {found}"
            )
    return family


# --------------------------------------------------------------------------- loading in a replica


def load(model_id: str, uri: str, cfg: ServeAppConfig) -> LoadedModel:
    """Resolve, load the family's predictor (on this replica's GPU if Ray gave it one), warm up."""
    import ray

    from sentiray import families

    folder, info = resolve_source(uri, cfg.tracking_uri)
    manifest = families.read_manifest(folder)
    overrides = {k: v for k, v in (("kind", cfg.kind), ("dtype", cfg.dtype)) if v is not None}
    manifest.update(overrides)
    # The YAML's ray_actor_options decide the GPU, not our args: ask Ray what we got.
    device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() else None
    predictor = families.family_of_manifest(manifest).predictor_class.load(folder, manifest, device=device)
    loaded = LoadedModel(predictor, {"id": model_id, **info}, uri, folder)
    try:
        # One tiny prediction, so that the first request pays no lazy initialisation. Best
        # effort: a family whose rows need more than text just starts cold.
        predictor.predict([{"text": "warm up"}])
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        logger.info("sentiray: no warm-up for %s (%s: %s)", model_id, type(exc).__name__, exc)
    return loaded
