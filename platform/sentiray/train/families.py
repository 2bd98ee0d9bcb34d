"""Model families plug into the shared training loop.

A family knows its model, how to batch rows, its loss and its dev metrics; the loop
(:mod:`sentiray.train.loop`) owns Ray Train, DeepSpeed, checkpoints, resume and tracking.
Families register by name (``train.family`` in the YAML), so adding one is a new module
and one decorator, not a branch in the loop.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, Callable

import torch

from sentiray.config import ConfigError, JobConfig

# name -> "module:Class"; imported lazily so that a family's heavy imports stay its own.
_FAMILIES: dict[str, str] = {
    "mulcot": "sentiray.train.mulcot:MulCoTFamily",
}


def register(name: str, target: str) -> None:
    _FAMILIES[name] = target


def names() -> list[str]:
    return sorted(_FAMILIES)


def family_class(name: str) -> type["Family"]:
    if name not in _FAMILIES:
        raise ConfigError(f"train.family: unknown family {name!r}; known: {names()}")
    module, cls = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


class Family(abc.ABC):
    """What the loop needs from a model family."""

    #: the dev metric to select checkpoints by, and whether larger is better
    metric: str = "dev_accuracy"
    mode: str = "max"

    def __init__(self, job: JobConfig):
        self.job = job

    def check(self) -> None:
        """Fail early (on the driver, before Ray starts) when the config cannot work."""

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The trainable model (LoRA applied if configured); frozen helpers live on self."""

    @abc.abstractmethod
    def load_rows(self, split: str) -> list[dict[str, Any]]:
        """The rows of one split of the training data."""

    @abc.abstractmethod
    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One micro-batch of model inputs."""

    @abc.abstractmethod
    def loss(self, model: Callable[..., Any], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backpropagate, named parts for logging)."""

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Sums over ``rows`` (this worker's share): the loop adds them up over workers.

        Return plain numbers (counts, sums) keyed by name plus ``predictions``/``golds``
        lists; :meth:`summarize` turns the combined sums into metrics.
        """

    @abc.abstractmethod
    def summarize(self, combined: dict[str, Any]) -> dict[str, float]:
        """Dev metrics (including :attr:`metric`) from every worker's combined sums."""

    @abc.abstractmethod
    def export(self, model: torch.nn.Module, out_dir: str) -> str:
        """Write the trained model in Hugging Face format; returns the folder."""


def create(job: JobConfig) -> Family:
    return family_class(job.train.family)(job)
