"""The interface a model family implements, and what the platform calls it for.

A family owns what differs between methods; the platform owns everything else and never
branches on the family:

=====================================  ============================================
the family (:class:`Family`)           the platform
=====================================  ============================================
:meth:`~Family.build_model`: what      Ray Train, DeepSpeed, precision, placement
trains, what is a frozen backbone
:meth:`~Family.transform` (per row),   reading, sharding, streaming the rows
:meth:`~Family.collate`
:meth:`~Family.loss`,                  the step loop, accumulation, clipping,
:meth:`~Family.param_groups`           schedules
:meth:`~Family.selection` (metric +    checkpoints, resume, keeping the best,
tie-breakers), ``train.plateau`` /     early stopping, plateau halving
``train.early_stopping_patience``
:attr:`~Family.frozen_backbone`,       where checkpoints go (local, s3://)
:meth:`~Family.export`
:meth:`Predictor.predict`              dev evaluation, ``sentiray evaluate``, the
                                       MLflow pyfunc, the Serve replica
:meth:`Predictor.metrics`,             ``sentiray score``, reports, MLflow logging
:meth:`Predictor.plots`
its config section (``mulcot:``, ...)  validation, overrides, sweeps over any field
:attr:`Family.endpoints`               HTTP, auth, limits, batching, autoscaling
=====================================  ============================================

Two objects per family: a :class:`Family` is built from a job config and trains; a
:class:`Predictor` is built from a trained model (in memory during training, or from its
exported folder) and predicts. An exported folder carries ``sentiray.json`` (its
manifest: the family, the task, the labels, what the family needs to load it), so
evaluation, the pyfunc and Serve find the family from the model alone.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from sentiray.config import JobConfig


@dataclass(frozen=True)
class Selection:
    """How epoch-end evaluations are ranked: a primary dev metric, then tie-breakers.

    ``keys``: ``(metric, "max" | "min")`` pairs, primary first, e.g.
    ``(("dev_accuracy", "max"), ("dev_weighted_f1", "max"))``.
    """

    keys: tuple[tuple[str, str], ...]

    @property
    def metric(self) -> str:
        return self.keys[0][0]

    @property
    def mode(self) -> str:
        return self.keys[0][1]

    def key(self, metrics: dict[str, float]) -> tuple[float, ...]:
        """Comparable key: larger is better in every position."""
        return tuple(float(metrics[m]) if mode == "max" else -float(metrics[m]) for m, mode in self.keys)

    def better(self, metrics: dict[str, float], best_key: Sequence[float] | None) -> bool:
        return best_key is None or self.key(metrics) > tuple(best_key)


@dataclass
class Endpoint:
    """One HTTP route of a family's endpoint (the server adds auth, limits, batching, errors).

    ``parse(request, context)`` runs in the HTTP front door: it checks what a request may
    carry (raising :class:`~sentiray.serving.schemas.ApiError` with a 4xx naming the field)
    and returns ``(rows, options)``: canonical rows for :meth:`Predictor.predict` and the
    predict options. ``respond(request, predictions, model_info)`` turns the predictions
    (one per row) into the response body.
    """

    path: str
    request: type  # a pydantic model: the body schema (FastAPI answers a violation with 422)
    parse: Callable[[Any, Any], tuple[list[dict[str, Any]], dict[str, Any]]]
    respond: Callable[[Any, list[dict[str, Any]], dict[str, Any]], Any]
    response: type | None = None  # the response schema, for the OpenAPI document
    summary: str = ""
    # Serving additions (defaults keep older endpoints valid): ``generates(options)`` says a
    # request writes free text, so it runs beside label scoring, capped, never in front of it;
    # ``settings``: a pydantic model of the app's ``endpoint:`` args, given to parse as context.settings.
    generates: Callable[[dict[str, Any]], bool] | None = None
    settings: type | None = None


class Predictor(abc.ABC):
    """Predictions of one trained model, in its family's output schema.

    The loop's dev evaluation, ``sentiray evaluate``, the registered MLflow pyfunc and the
    Serve replica all call :meth:`predict`; there is no other prediction path.
    """

    #: rows per forward pass when the caller does not batch
    batch_size: int = 16
    #: whether the model also writes free text (the OpenAI-compatible chat routes)
    supports_chat: ClassVar[bool] = False

    def __init__(self, manifest: dict[str, Any]):
        self.manifest = manifest
        self.task: str = manifest["task"]
        self.labels: tuple[str, ...] = tuple(manifest.get("labels") or ())

    @classmethod
    @abc.abstractmethod
    def load(cls, folder: str, manifest: dict[str, Any], device: str | None = None) -> Predictor:
        """The predictor of an exported model folder (local)."""

    @abc.abstractmethod
    def predict(self, rows: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One prediction per canonical row, in order. ``options``: the family's per-call knobs."""

    def validate_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The options with defaults filled; unknown ones raise ValueError naming them."""
        return dict(options or {})

    # ------------------------------------------------------------------ scoring

    def scored(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        """One line of a predictions file in ``sentiray score``'s format."""
        return {"id": row.get("id"), "pred": prediction.get("label"), "label": row.get("label")}

    def metrics(self, rows: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
        """The field's metrics (its reference arithmetic, through ``sentiray score``'s code)."""
        from sentiray.evaluate import score

        return score.score(self.task, [self.scored(r, p) for r, p in zip(rows, predictions)], labels=self.labels)

    @classmethod
    def evaluate_options(cls, job: Any) -> dict[str, Any]:
        """The predict options ``sentiray evaluate`` uses, from the job (its family section)."""
        return {}

    def report(
        self, rows: list[dict[str, Any]], predictions: list[dict[str, Any]], options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What ``sentiray evaluate`` writes into report.json: ``metrics`` (flat numbers, logged
        to MLflow) and anything else worth keeping (a confusion matrix, reasoning metrics)."""
        return {"metrics": self.metrics(rows, predictions)}

    def report_markdown(self, report: dict[str, Any]) -> str:
        """The body of report.md (empty: a table of the metrics)."""
        return ""

    def plots(
        self, rows: list[dict[str, Any]], predictions: list[dict[str, Any]], report: dict[str, Any]
    ) -> dict[str, Any]:
        """Named matplotlib figures (``confusion.png``, ``scatter.png``, ...)."""
        return {}

    # ------------------------------------------------------------------ chat (optional)

    def generate(
        self, prompts: list[str], images: list[Any], max_new_tokens: int, temperature: float = 0.0, **kwargs: Any
    ) -> list[Any]:
        raise NotImplementedError(f"family {self.manifest.get('family')!r} does not write free text")


class Family(abc.ABC):
    """A model family in training: built from the job, run inside every Ray Train worker."""

    #: registry name (``train.family``)
    name: ClassVar[str]
    #: the job section holding this family's own settings (``mulcot``, ...); None: none
    section: ClassVar[str | None] = None
    #: the tasks (data set kinds) it trains on
    tasks: ClassVar[tuple[str, ...]] = ()
    #: inference class of its exported models
    predictor_class: ClassVar[type[Predictor]]
    #: HTTP routes of its endpoint
    endpoints: ClassVar[tuple[Endpoint, ...]] = ()
    #: True: the backbone is frozen, checkpoints hold the trainable parameters only
    frozen_backbone: ClassVar[bool] = False
    #: columns of the canonical rows it reads (None: all); others are not loaded
    columns: ClassVar[tuple[str, ...] | None] = None
    #: dotted config fields holding paths of its own (``lrsa.vision_model``): made absolute
    #: on the driver, like model.path, so every worker reads the same place
    path_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, job: JobConfig):
        self.job = job
        self.settings = job.section(self.section) if self.section else None
        self._data_manifest: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the data it trains on

    def data_uri(self) -> str:
        data = self.job.data
        return self.job.resolve(data.input or data.output)

    def data_manifest(self) -> dict[str, Any]:
        from sentiray.data import schema

        if self._data_manifest is None:
            self._data_manifest = schema.read_manifest(self.data_uri())
        return self._data_manifest

    @property
    def task(self) -> str:
        return self.data_manifest()["task"]

    @property
    def labels(self) -> tuple[str, ...]:
        from sentiray.data import schema

        return schema.labels_for(self.task)

    def check(self) -> None:
        """Fail early (on the driver, before Ray starts) when the config or data cannot work.

        Raise :class:`~sentiray.config.ConfigError` naming the field or the data set."""
        from sentiray.config import ConfigError

        if self.tasks and self.task not in self.tasks:
            raise ConfigError(
                f"train.family {self.name!r} trains on {' or '.join(self.tasks)} data; "
                f"{self.data_uri()} holds {self.task!r}"
            )
        from sentiray.train.data import check_trainable

        check_trainable(self.data_uri())

    def run_name(self) -> str:
        """The MLflow run name of its training stage."""
        return f"train-{self.name}"

    def registered_name(self) -> str:
        """Default registered-model name (``train.register_as`` overrides it)."""
        return f"sentiray-{self.name.replace('_', '-')}"

    # ------------------------------------------------------------------ the model

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The module DeepSpeed wraps: trainable parts (LoRA applied if configured) and any
        frozen backbone (``requires_grad=False``); frozen helpers (a KD teacher) live on self."""

    def param_groups(self, model: torch.nn.Module) -> dict[str, list[Any]]:
        """Named groups of trainable parameters; ``train.param_groups.<name>`` sets each one's
        lr, weight decay and eps."""
        return {"all": [p for p in model.parameters() if p.requires_grad]}

    # ------------------------------------------------------------------ batches and loss

    @abc.abstractmethod
    def transform(self, row: dict[str, Any]) -> dict[str, Any]:
        """Per-row CPU work (decode, resize, tokenize), done before the step loop.

        A row that cannot train (e.g. too long) returns ``{"skip": reason, "id": ...}``:
        the loop counts it and leaves it out of its micro-batch."""

    @abc.abstractmethod
    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """One micro-batch of model inputs from transformed rows."""

    @abc.abstractmethod
    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backpropagate, named parts for logging). Under ZeRO-3 every rank must run
        the same forward passes for every micro-batch."""

    # ------------------------------------------------------------------ choosing and keeping

    @abc.abstractmethod
    def selection(self) -> Selection:
        """How epoch-end dev metrics rank checkpoints (and drive plateau and early stopping)."""

    @abc.abstractmethod
    def predictor(self, model: torch.nn.Module) -> Predictor:
        """A predictor around the model being trained (for the dev evaluation)."""

    def export_parameters(self, model: torch.nn.Module) -> list[Any]:
        """Parameters an export needs gathered under ZeRO-3 (default: all)."""
        return list(model.parameters())

    @abc.abstractmethod
    def export(self, model: torch.nn.Module, out_dir: str) -> None:
        """Write the trained model to the local folder ``out_dir`` (the platform adds the
        manifest and uploads). A frozen backbone is referenced, not copied."""

    def manifest(self) -> dict[str, Any]:
        """What an exported folder's ``sentiray.json`` records (extend, do not drop keys)."""
        return {"family": self.name, "task": self.task, "labels": list(self.labels)}


@dataclass
class Skipped:
    """Rows a worker left out of training, by reason (reported by the loop)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, row_id: str | None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 5 and row_id is not None:
            ids.append(str(row_id))
