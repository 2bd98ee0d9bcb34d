"""``tune:``: a sweep of the training stage on Ray Tune."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sentiray.config.base import Section

FINITE = ("choice", "grid")
FLOATS = ("uniform", "loguniform")
INTS = ("randint", "lograndint")
KINDS = FINITE + FLOATS + INTS


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_shape(space: dict[str, Any]) -> None:
    """Raise ValueError naming the first malformed entry (used by ``TuneConfig``)."""
    for key, spec in space.items():
        where = f"{key!r}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"{where}: must be one of {{{'|'.join(KINDS)}: ...}}, got {spec!r}")
        ((kind, args),) = spec.items()
        if kind not in KINDS:
            raise ValueError(f"{where}: unknown distribution {kind!r}; known: {list(KINDS)}")
        if not isinstance(args, list):
            raise ValueError(f"{where}: {kind} takes a list, got {args!r}")
        if kind in FINITE:
            if not args:
                raise ValueError(f"{where}: {kind} needs at least one value, got an empty list")
            continue
        if len(args) != 2 or not all(_is_number(a) for a in args):
            raise ValueError(f"{where}: {kind} takes [low, high] (two numbers), got {args!r}")
        low, high = args
        if kind in INTS and not all(float(a).is_integer() for a in args):
            raise ValueError(f"{where}: {kind} takes integers, got {args!r}")
        if low > high:
            raise ValueError(f"{where}: {kind} low ({low}) > high ({high})")
        if kind in FLOATS and low == high:
            raise ValueError(f"{where}: {kind} low == high ({low}): use {{choice: [{low}]}} for a constant")
        if kind in ("loguniform", "lograndint") and low <= 0:
            raise ValueError(f"{where}: {kind} needs 0 < low, got low={low}")


def check_searcher(space: dict[str, Any], searcher: str) -> None:
    """Raise ValueError when ``searcher`` cannot sample ``space``."""
    if searcher == "grid":
        continuous = [k for k, spec in space.items() if next(iter(spec)) not in FINITE]
        if continuous:
            raise ValueError(
                f"searcher 'grid' needs finite values (choice or grid); {continuous} are ranges: "
                "list values with grid, or use searcher random or optuna"
            )
    if searcher == "optuna":
        grids = [k for k, spec in space.items() if next(iter(spec)) == "grid"]
        if grids:
            raise ValueError(f"searcher 'optuna' samples, it cannot enumerate a grid: use choice for {grids}")


class TuneConfig(Section):
    """``tune:`` of a sweep job: which training fields to vary, how to search, when to stop.

    The rest of the job (``data``, ``model``, ``train``, ``distill``) is the base training
    job; each trial is that job with the sampled values applied as ``a.b=value`` overrides,
    trained by Ray Train. One Tune iteration is one training epoch.
    """

    metric: str = Field(
        "dev_accuracy",
        description="What trials are compared by, at every epoch end: a dev metric of the family (dev_accuracy, "
        "dev_macro_f1, ...) or the epoch's mean training loss (train_loss, or per stream train_ce_c, "
        "train_ce_l, ...: unweighted, so they compare across loss-weight values; train_loss does not).",
    )
    mode: Literal["max", "min"] = "max"
    num_samples: int | None = Field(
        None,
        gt=0,
        description="Trials to sample; with grid entries, passes over the whole grid. Default: 1 for the "
        "grid searcher, else 4.",
    )
    search_space: dict[str, Any] = Field(
        ...,
        min_length=1,
        description="Config field -> distribution: {choice|grid: [values]}, {uniform|loguniform: [low, high]}, "
        "{randint|lograndint: [low, high]} (ints, high included).",
    )
    searcher: Literal["random", "grid", "optuna"] = Field(
        "random", description="optuna: TPE (random until it has 10 results)."
    )
    scheduler: Literal["fifo", "asha"] = Field(
        "asha", description="asha stops poor trials at rungs; fifo runs each to the end."
    )
    grace_period: int = Field(1, gt=0, description="ASHA: epochs every trial trains before it may be stopped.")
    reduction_factor: float = Field(2, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung.")
    max_t: int | None = Field(None, gt=0, description="Epochs of each trial (ASHA's max_t); default train.epochs.")
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="Default: as many as the cluster's CPUs (and GPUs) hold, given each trial's needs."
    )
    trial_cpus: float = Field(
        0.5,
        ge=0,
        description="CPUs held by each trial's driver (the Tune trial that runs TorchTrainer.fit, mostly "
        "waiting); its Train workers hold train.num_workers x train.cpus_per_worker more, "
        "and a streamed input (train.stream) its Ray Data actors and a read task.",
    )
    seed: int | None = Field(0, description="Seed of the searcher's sampling (None: not reproducible).")
    output: str = Field("tune", description="URI of the sweep: Tune state, one folder per trial, best.yaml.")
    resume: bool | Literal["auto"] = Field(
        "auto",
        description="auto: continue the sweep found at tune.output, else start one; true: it must exist; "
        "false: start a new one (fails if tune.output holds a sweep).",
    )

    @field_validator("search_space")
    @classmethod
    def _space_shape(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_shape(v)  # raises ValueError naming the entry
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        check_searcher(self.search_space, self.searcher)
        if self.num_samples is None:
            self.num_samples = 1 if self.searcher == "grid" else 4
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) > max_t ({self.max_t})")
        return self
