"""Model families: the registry, and finding the family of an exported model.

A family is one module with a :class:`~sentiray.families.base.Family` subclass (training)
and a :class:`~sentiray.families.base.Predictor` subclass (inference), registered here by
name. Adding one is a new module plus its config section and its jobs/, serve/, tune/
files; the loop, the stages and the server call it through :mod:`sentiray.families.base`.

Entries are ``"module:Class"`` strings, imported lazily so that a family's heavy imports
stay its own; :func:`register` adds one, and ``train.family`` may also name any
``"module:Class"`` directly (a plugin package, or a test's own family).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import TYPE_CHECKING, Any

from sentiray.config import ConfigError

if TYPE_CHECKING:
    from sentiray.config import JobConfig
    from sentiray.families.base import Family, Predictor

MANIFEST = "sentiray.json"  # in every exported model folder: which family, task, labels

_FAMILIES: dict[str, str] = {
    "mulcot": "sentiray.families.mulcot:MulCoTFamily",
    "lrsa": "sentiray.families.lrsa:LrsaFamily",
    "mse_adapter": "sentiray.families.mse_adapter:MseAdapterFamily",
}


def register(name: str, target: str) -> None:
    """Make ``train.family: name`` refer to ``target`` ("module:Class")."""
    _FAMILIES[name] = target


def names() -> list[str]:
    return sorted(_FAMILIES)


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def family_class(name: str) -> type[Family]:
    """A registered family, or any ``"package.module:Class"`` importable here and on the workers."""
    if name in _FAMILIES:
        return _import(_FAMILIES[name])
    if ":" in name:
        try:
            return _import(name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"train.family: cannot import {name!r} ({exc})") from None
    raise ConfigError(f"train.family: unknown family {name!r}; known: {names()} (or give 'module:Class')")


def create(job: JobConfig) -> Family:
    return family_class(job.train.family)(job)


def target_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# --------------------------------------------------------------------------- exported models


def write_manifest(folder: str, manifest: dict[str, Any], family_cls: type | None = None) -> None:
    """Write ``sentiray.json`` into a local model folder."""
    data = dict(manifest)
    if family_cls is not None:
        data.setdefault("family_class", target_of(family_cls))
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of a local model folder. A plain Hugging Face folder without one (a
    checkpoint not trained here) is a MulCoT-style model of the sentiment labels."""
    from sentiray.data.schema import SENTIMENT_LABELS

    path = os.path.join(folder, MANIFEST)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {"family": "mulcot", "task": "msc", "labels": list(SENTIMENT_LABELS)}


def family_of_manifest(manifest: dict[str, Any]) -> type[Family]:
    """The family class a manifest names: registered name first, else its recorded class."""
    name = manifest.get("family", "mulcot")
    if name in _FAMILIES:
        return family_class(name)
    if manifest.get("family_class"):
        return _import(manifest["family_class"])
    raise ConfigError(f"the model names family {name!r}, which this sentiray does not know; known: {names()}")


def load_predictor(folder: str, device: str | None = None) -> Predictor:
    """The predictor of an exported model (a local folder; resolve URIs first)."""
    manifest = read_manifest(folder)
    return family_of_manifest(manifest).predictor_class.load(folder, manifest, device=device)
