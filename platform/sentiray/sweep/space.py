"""Search spaces from YAML: ``{"train.lr": {"loguniform": [1e-4, 1e-2]}, ...}`` -> Ray Tune.

Each entry maps a config field (dotted, as on the command line) to one distribution:

==============================  ==========================================================
``{choice: [a, b, ...]}``       one of the values, sampled (grid searcher: every value)
``{grid: [a, b, ...]}``         every value, in every combination with the other grids
``{uniform: [low, high]}``      a float between low and high
``{loguniform: [low, high]}``   a float, uniform in log space (0 < low)
``{randint: [low, high]}``      an integer, low and high included
``{lograndint: [low, high]}``   an integer, uniform in log space (0 < low), both included
==============================  ==========================================================

Three checks, all before Ray starts:

- :func:`check_shape` (run when the config is validated): each entry is one known kind
  with well-formed arguments (a non-empty list of values, ``low <= high``, ...);
- :func:`check_searcher`: the searcher can sample the space (grid needs finite values,
  Optuna cannot enumerate a grid);
- :func:`check_fields`: each key is a real config field and every value the space can
  produce is valid there: the key is applied as an ``a.b=value`` override to the base job
  and the result validated by pydantic, so ``train.lrr`` fails naming ``train.lrr``.
"""

from __future__ import annotations

from typing import Any

from sentiray import config as config_mod
from sentiray.config import ConfigError
from sentiray.config.tune import FINITE, FLOATS, INTS, KINDS, check_searcher, check_shape  # noqa: F401 (part of this module's API)

# Fields the sweep sets itself, or that are not training hyperparameters.
_RESERVED_PREFIXES = ("stage", "name", "storage.", "ray.", "tracking.", "tune.")
_RESERVED = {
    "train.output": "each trial writes under tune.output/trials/<trial id>",
    "train.epochs": "it is the sweep's time axis: set tune.max_t (ASHA's max_t) instead",
}


def probe_values(spec: dict[str, Any]) -> list[Any]:
    """The values that stand for the whole distribution in validation: every value of a
    choice/grid, both ends of a range (pydantic bounds are monotonic)."""
    ((kind, args),) = spec.items()
    if kind in INTS:
        return [int(args[0]), int(args[1])]
    return list(args)


def check_fields(space: dict[str, Any], base_raw: dict[str, Any], source: str = "tune.search_space") -> None:
    """Every key must be a config field that accepts every value of its distribution.

    ``base_raw`` is the sweep job as a plain dict; each probe is validated as the training
    job a trial would run.
    """
    for key in space:
        if key in _RESERVED:
            raise ConfigError(f"invalid config {source}: {key!r} cannot be tuned: {_RESERVED[key]}")
        if key.startswith(_RESERVED_PREFIXES) or key in ("stage", "name"):
            raise ConfigError(
                f"invalid config {source}: {key!r} is not a training hyperparameter; "
                "tune fields of data, model, train, distill or the family's section (mulcot, ...)"
            )
    train_raw = {**base_raw, "stage": "train"}
    train_raw.pop("tune", None)
    for key, spec in space.items():
        for value in probe_values(spec):
            try:
                probe = config_mod.apply_overrides(train_raw, [f"{key}={_yaml_scalar(value)}"])
                config_mod.validate(probe, source=f"{source}[{key!r}] = {value!r}")
            except ConfigError as exc:
                raise ConfigError(f"{exc}\n  (from tune.search_space entry {key!r}: {spec})") from None


def _yaml_scalar(value: Any) -> str:
    """A value as override text (parsed back as YAML by apply_overrides)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def to_tune(space: dict[str, Any], searcher: str) -> dict[str, Any]:
    """The Ray Tune ``param_space``: one domain per key (keys stay dotted)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        ((kind, args),) = spec.items()
        if kind == "grid" or (kind == "choice" and searcher == "grid"):
            out[key] = tune.grid_search(list(args))
        elif kind == "choice":
            out[key] = tune.choice(list(args))
        elif kind == "uniform":
            out[key] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "loguniform":
            out[key] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "randint":
            out[key] = tune.randint(int(args[0]), int(args[1]) + 1)  # Tune's upper bound is exclusive
        elif kind == "lograndint":
            out[key] = tune.lograndint(int(args[0]), int(args[1]) + 1)
    return out


def overrides(hp: dict[str, Any]) -> list[str]:
    """A trial's sampled values as ``a.b=value`` overrides (sorted: stable across runs)."""
    return [f"{key}={_yaml_scalar(_plain(value))}" for key, value in sorted(hp.items())]


def _plain(value: Any) -> Any:
    """numpy scalars (from samplers) -> Python numbers, so YAML and pydantic read them."""
    return value.item() if hasattr(value, "item") else value


def log_scale(spec: dict[str, Any]) -> bool:
    return next(iter(spec)) in ("loguniform", "lograndint")
