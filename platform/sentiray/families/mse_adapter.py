"""MSE-Adapter (method.md, section 3) as a model family: a frozen causal LLM plus a small
trainable adapter (:mod:`sentiray.models.mse_adapter`) that turns audio and video feature
sequences into a few pseudo tokens.

Each row becomes one sequence ``[prefix; n pseudo tokens; text (fixed length per data set);
suffix; task prompt] answer<eos>``, the loss on the answer tokens only. The answer is the
score with one decimal and its sign (``+1.2``, regression: MOSI/MOSEI/SIMS/SIMS-V2 and the
synthetic ``msa``) or the class index (``3``, emotion recognition: MELD/CHERMA and synthetic
``erc``). Prediction: greedy decoding of a few tokens parsed to a signed float or an index
(an answer that does not parse counts as 0, as in the paper's code, and is counted); for ERC
also the likelihood of every class index, which gives probabilities (the default label,
``mse_adapter.erc_decode``).

Metrics: the data set's own arithmetic (MMSA's, :mod:`sentiray.evaluate.regression`), chosen by
the data's ``source``: mosi, mosei, sims, simsv2, meld, cherma; synthetic ``msa`` (scores in
[-3, 3], like MOSI/MOSEI) is scored as mosi, synthetic ``erc`` (MELD's seven emotions) as meld.

Only the adapter trains and is saved: checkpoints hold its parameters (``frozen_backbone``),
an export holds ``adapter.safetensors`` + ``adapter.json`` and names the backbone (path or URI)
in its manifest. :meth:`MseAdapterPredictor.load` shares one frozen backbone per process
between every adapter on it (keyed by path, dtype, device), so several adapters served from
one replica cost one backbone's memory.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sentiray.config import ConfigError, JobConfig
from sentiray.families.base import Family, Predictor, Selection

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
MODALITIES = ("audio", "vision")

# Text tokens per row (the paper's: MOSEI and SIMS-V2 50, MELD 65, CHERMA 78).
TEXT_LENGTH = {"mosi": 50, "mosei": 50, "sims": 50, "simsv2": 50, "meld": 65, "cherma": 78, "synthetic": 24}
SCORERS = {"mosi", "mosei", "sims", "simsv2", "meld", "cherma"}
DEFAULT_SCORER = {"msa": "mosi", "erc": "meld"}  # synthetic data: the arithmetic of its look-alike
MAX_NEW_TOKENS = {"msa": 4, "erc": 2}
# The paper's task prompts (Qwen's configs; SIMS-V2's and CHERMA's are Chinese there).
REGRESSION_PROMPT = (
    "Please predict the sentiment intensity of the above multimodal content in the range "
    "[{low}, {high}]. Assistant: The sentiment is"
)
ERC_PROMPT = (
    "Please recognize the emotion of the above multimodal content from the target set <{choices}>. "
    "Assistant: The emotion is"
)


# --------------------------------------------------------------------------- what a model reads


@dataclass(frozen=True)
class Spec:
    """Everything prediction needs besides the weights (kept in the export's manifest)."""

    task: str
    labels: tuple[str, ...]
    source: str
    scorer: str
    prompt: str
    prefix: str
    suffix: str
    text_length: int
    pseudo_tokens: int
    max_new_tokens: int
    erc_decode: str
    needs_features: bool

    @property
    def regression(self) -> bool:
        return self.task == "msa"

    def to_manifest(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Spec:
        return cls(**{k: (tuple(manifest[k]) if k == "labels" else manifest[k]) for k in cls.__dataclass_fields__})


def default_prompt(task: str, source: str, labels: tuple[str, ...]) -> str:
    if task == "erc":
        return ERC_PROMPT.format(choices=", ".join(f"{label}:{i}" for i, label in enumerate(labels)))
    low, high = ("-1.0", "+1.0") if source in ("sims", "simsv2") else ("-3.0", "+3.0")
    return REGRESSION_PROMPT.format(low=low, high=high)


def make_spec(settings: Any, task: str, source: str, labels: tuple[str, ...]) -> Spec:
    """The :class:`Spec` of a job's ``mse_adapter:`` section for data of ``task`` from ``source``."""
    prompt = settings.prompts.get(source) or settings.prompts.get(task) or default_prompt(task, source, labels)
    scorer = settings.scorer or (source if source in SCORERS else DEFAULT_SCORER[task])
    return Spec(
        task=task,
        labels=tuple(labels),
        source=source,
        scorer=scorer,
        prompt=prompt,
        prefix=settings.prefix,
        suffix=settings.suffix,
        text_length=settings.text_length or TEXT_LENGTH.get(source, 50),
        pseudo_tokens=settings.pseudo_tokens,
        max_new_tokens=settings.max_new_tokens or MAX_NEW_TOKENS[task],
        erc_decode=settings.erc_decode,
        needs_features=not settings.text_only,
    )


def format_score(score: float) -> str:
    """The regression answer: one decimal, signed (``+1.2``, ``-0.4``, ``+0.0``), as the paper's Qwen code."""
    text = f"{score:.1f}"
    return text if text.startswith("-") else "+" + text


_NUMBER = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)")


def parse_score(text: str) -> float | None:
    """The signed number an answer starts with (None: unparseable). Dashes the model may write
    for a minus sign count as one, as in the reference code."""
    match = _NUMBER.match(text.replace("\u2013", "-").replace("\u2212", "-"))
    return float(match.group(1)) if match else None


def parse_index(text: str, n_classes: int) -> int | None:
    """The class index an answer starts with (None: unparseable or out of range)."""
    match = re.match(r"\s*(\d+)", text)
    if not match or int(match.group(1)) >= n_classes:
        return None
    return int(match.group(1))


def feature_arrays(row: dict[str, Any], dims: dict[str, int]) -> dict[str, np.ndarray]:
    """The row's audio/vision as T x D float32 arrays; ValueError naming the field when one is
    missing, empty, of the wrong width or not finite (a training row is then set aside, a request
    answered 4xx)."""
    out = {}
    for name in MODALITIES:
        value = row.get(name)
        if value is None:
            raise ValueError(f"{name}: missing; this adapter reads {name} features ({dims[name]} numbers a frame)")
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: not a T x D sequence of numbers") from None
        if array.ndim == 1 and array.size == dims[name]:
            array = array.reshape(1, -1)  # one frame (utterance-level features)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"{name}: expected T x {dims[name]} frames (T >= 1), got shape {array.shape}")
        if array.shape[1] != dims[name]:
            raise ValueError(f"{name}: frames of {array.shape[1]} numbers, this adapter reads {dims[name]}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: holds NaN or infinite values")
        out[name] = array
    return out


class RowEncoder:
    """Rows -> the model's batches: token layout, answers, padded feature sequences."""

    def __init__(self, tokenizer: Any, spec: Spec, dims: dict[str, int] | None):
        from sentiray.models.mse_adapter import Layout

        self.tokenizer, self.spec, self.dims = tokenizer, spec, dims
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        head = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + self.ids(spec.prefix)
        self.layout = Layout(
            tuple(head),
            spec.pseudo_tokens,
            spec.text_length,
            tuple(self.ids(spec.suffix) + self.ids(" " + spec.prompt.strip())),
            pad,
            tokenizer.eos_token_id,
        )
        # Each class's answer tokens, for scoring classes by likelihood.
        self.class_ids = [self.ids(" " + str(i)) for i in range(len(spec.labels))] if not spec.regression else []

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, row: dict[str, Any]) -> str:
        if self.spec.regression:
            return " " + format_score(float(row["score"]))
        return " " + str(self.spec.labels.index(row["label"]))

    def encode(self, row: dict[str, Any], with_answer: bool) -> dict[str, Any]:
        """One row's example; ValueError when the row cannot be read (the reason names the field)."""
        text = row.get("text") or ""
        if not text.strip():
            raise ValueError("text: empty")
        ids, mask, cut = self.layout.prompt(self.ids(" " + text.strip()))
        example: dict[str, Any] = {"id": row.get("id"), "ids": ids, "mask": mask, "answer": [], "cut": cut}
        if with_answer:
            answer = self.ids(self.answer(row)) + ([self.layout.eos_id] if self.layout.eos_id is not None else [])
            example["answer"] = answer
        if self.spec.needs_features:
            example.update(feature_arrays(row, self.dims))
        return example

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Prompts share one length; answers are right-padded (label -100, attention 0)."""
        prompt_len = self.layout.prompt_length
        longest = max(len(e["answer"]) for e in examples)
        n = len(examples)
        ids = torch.full((n, prompt_len + longest), self.layout.pad_id, dtype=torch.long)
        mask = torch.zeros((n, prompt_len + longest), dtype=torch.long)
        labels = torch.full((n, prompt_len + longest), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["answer"])
            ids[i, :prompt_len] = torch.tensor(e["ids"])
            mask[i, :prompt_len] = torch.tensor(e["mask"])
            if k:
                ids[i, prompt_len : prompt_len + k] = torch.tensor(e["answer"])
                mask[i, prompt_len : prompt_len + k] = 1
                labels[i, prompt_len : prompt_len + k] = torch.tensor(e["answer"])
        start = self.layout.text_start
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "text_mask": mask[:, start : start + self.layout.text_length],
            "answer_length": longest,
        }
        if self.spec.needs_features:
            for name in MODALITIES:
                frames = [torch.from_numpy(np.array(e[name], dtype=np.float32)) for e in examples]
                batch[name] = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
                batch[f"{name}_lengths"] = torch.tensor([f.shape[0] for f in frames], dtype=torch.long)
        return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --------------------------------------------------------------------------- the frozen backbone, shared


_BACKBONES: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_BACKBONES_LOCK = threading.Lock()


def shared_backbone(path: str, dtype: str, device: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a frozen backbone, loaded once per process for each (path, dtype,
    device): every adapter on it shares the one copy."""
    from sentiray.models.loading import load_model

    key = (str(path), dtype, device)
    with _BACKBONES_LOCK:
        if key not in _BACKBONES:
            model, tokenizer = load_model(path, kind="causal_lm", dtype=dtype, trust_remote_code=trust_remote_code)
            _BACKBONES[key] = (model.to(device).eval().requires_grad_(False), tokenizer)
        return _BACKBONES[key]


def loaded_backbones() -> list[tuple[str, str, str]]:
    """The (path, dtype, device) of every backbone this process holds."""
    with _BACKBONES_LOCK:
        return list(_BACKBONES)


def _serving_dtype(device: str) -> str:
    # bf16 on GPUs (the paper runs the LLM in half precision); full precision on CPUs.
    return "bfloat16" if device.startswith("cuda") else "float32"


# --------------------------------------------------------------------------- training


class MseAdapterFamily(Family):
    name = "mse_adapter"
    section = "mse_adapter"
    tasks = ("msa", "erc")
    frozen_backbone = True
    columns = ("id", "task", "text", "audio", "vision", "label", "score", "source")

    def __init__(self, job: JobConfig):
        super().__init__(job)
        self.tokenizer = None
        self._encoder: RowEncoder | None = None
        self._dims: dict[str, int] | None = None
        self._counts: tuple[int, int] | None = None

    def run_name(self) -> str:
        return f"train-mse-adapter-{self.task}"

    def registered_name(self) -> str:
        return f"sentiray-mse-adapter-{self.task}"

    @property
    def source(self) -> str:
        return str(self.data_manifest().get("source") or "synthetic")

    def spec(self) -> Spec:
        return make_spec(self.settings, self.task, self.source, self.labels)

    # ------------------------------------------------------------------ checks (driver)

    def check(self) -> None:
        from transformers import AutoConfig

        super().check()
        if self.job.model.kind != "causal_lm":
            raise ConfigError(
                f"model.kind: mse_adapter puts its adapter in front of a causal LM; set model.kind: "
                f"causal_lm (got {self.job.model.kind!r})"
            )
        spec = self.spec()
        if spec.regression is False and not self.labels:
            raise ConfigError(f"{self.data_uri()}: task {self.task!r} has no labels to predict")
        if spec.needs_features:
            self.feature_dims()  # raises naming the data when a split has no features
        from sentiray.models.loading import resolve_model_path

        config = AutoConfig.from_pretrained(
            resolve_model_path(self.job.model.path), trust_remote_code=self.job.model.trust_remote_code
        )
        try:
            self.shape(int(config.hidden_size))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def feature_dims(self) -> dict[str, int]:
        """Audio / vision widths from the first train rows that have them (or the config)."""
        if self._dims is None:
            s = self.settings
            given = {"audio": s.audio_dim, "vision": s.vision_dim}
            found = _first_feature_widths(self.data_uri()) if None in given.values() else {}
            dims = {m: given[m] or found.get(m) for m in MODALITIES}
            missing = [m for m, d in dims.items() if not d]
            if missing:
                raise ConfigError(
                    f"{self.data_uri()}: the train split has no {' or '.join(missing)} features, which "
                    "the adapter reads (mse_adapter.text_only: true trains without them)"
                )
            self._dims = {m: int(d) for m, d in dims.items()}
        return self._dims

    def shape(self, hidden_size: int):
        from sentiray.models.mse_adapter import AdapterShape

        s = self.settings
        dims = self.feature_dims() if not s.text_only else {"audio": 0, "vision": 0}
        return AdapterShape(
            hidden_size=hidden_size,
            audio_dim=dims["audio"],
            vision_dim=dims["vision"],
            width=s.width,
            audio_hidden=s.audio_hidden,
            vision_hidden=s.vision_hidden,
            pseudo_tokens=s.pseudo_tokens,
            scales=tuple(s.scales),
            layer_norm=s.layer_norm,
            dropout=s.dropout,
            text_guide=s.text_guide,
            multi_scale=s.multi_scale,
            text_only=s.text_only,
        )

    # ------------------------------------------------------------------ model

    def encoder(self) -> RowEncoder:
        if self._encoder is None:
            from sentiray.models.loading import load_processor

            self.tokenizer = load_processor(
                self.job.model.path, kind="causal_lm", trust_remote_code=self.job.model.trust_remote_code
            )
            dims = self.feature_dims() if not self.settings.text_only else None
            self._encoder = RowEncoder(self.tokenizer, self.spec(), dims)
        return self._encoder

    def build_model(self) -> torch.nn.Module:
        from sentiray.models.loading import load_model
        from sentiray.models.mse_adapter import MseAdapter, MseAdapterModel, count_trainable

        m = self.job.model
        backbone, _ = load_model(m.path, kind="causal_lm", dtype=m.dtype, trust_remote_code=m.trust_remote_code)
        adapter = MseAdapter(self.shape(backbone.get_input_embeddings().embedding_dim))
        model = MseAdapterModel(backbone, adapter, self.encoder().layout)
        self._counts = (count_trainable(adapter), sum(p.numel() for p in backbone.parameters()))
        return model

    def param_groups(self, model: torch.nn.Module) -> dict[str, list[Any]]:
        return {"adapter": [p for p in _unwrap(model).adapter.parameters() if p.requires_grad]}

    # ------------------------------------------------------------------ rows and loss

    def transform(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.encoder().encode(row, with_answer=True)
        except ValueError as exc:
            return {"skip": str(exc), "id": row.get("id")}
        except (KeyError, TypeError) as exc:  # no score / an unknown label
            return {"skip": f"no usable answer ({type(exc).__name__}: {exc})", "id": row.get("id")}

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.encoder().collate(examples)

    def loss(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from sentiray.train.losses import target_ce

        batch = to_device(batch, next(model.parameters()).device)
        keep = batch["answer_length"] + 1  # the positions that predict answer tokens, and one before
        logits = model(batch, logits_to_keep=keep)
        loss = target_ce(logits, batch["labels"][:, -keep:])
        return loss, {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ selection, prediction, export

    def selection(self) -> Selection:
        if self.task == "erc":
            return Selection((("dev_weight_F1", "max"), ("dev_acc", "max")))
        tie = "dev_Mult_acc_2" if self.spec().scorer in ("sims", "simsv2") else "dev_Has0_acc_2"
        return Selection((("dev_MAE", "min"), (tie, "max")))

    def predictor(self, model: torch.nn.Module) -> MseAdapterPredictor:
        return MseAdapterPredictor(self.manifest(), _unwrap(model), self.encoder())

    def export_parameters(self, model: torch.nn.Module) -> list[Any]:
        return list(_unwrap(model).adapter.parameters())

    def export(self, model: torch.nn.Module, out_dir: str) -> None:
        """The adapter alone: its weights and shape; the backbone is named in the manifest."""
        from safetensors.torch import save_file

        adapter = _unwrap(model).adapter
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in adapter.state_dict().items()}
        save_file(state, os.path.join(out_dir, ADAPTER_WEIGHTS))
        with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as f:
            json.dump(adapter.shape.to_dict(), f, indent=2)

    def manifest(self) -> dict[str, Any]:
        m = self.job.model
        out = {
            **super().manifest(),
            **self.spec().to_manifest(),
            "backbone": m.path,
            "backbone_dtype": m.dtype,
            "trust_remote_code": m.trust_remote_code,
        }
        if self._counts:
            out.update(trainable_parameters=self._counts[0], frozen_parameters=self._counts[1])
        return out


def _unwrap(model: Any) -> Any:
    """The MseAdapterModel inside a DeepSpeed engine."""
    return getattr(model, "module", model)


def _first_feature_widths(data_uri: str) -> dict[str, int]:
    """Feature widths from the first train shard's first row group that has them (no full read)."""
    import pyarrow.parquet as pq

    from sentiray.data import schema, storage

    found: dict[str, int] = {}
    for uri in schema.split_uris(data_uri, "train"):
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = [m for m in MODALITIES if m in parquet.schema_arrow.names]
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=names)
                for name in names:
                    if name not in found:
                        first = next((a for a in schema.features_from_arrow(table.column(name)) if a is not None), None)
                        if first is not None:
                            found[name] = int(first.shape[1])
                if len(found) == len(MODALITIES):
                    return found
    return found


# --------------------------------------------------------------------------- inference


class MseAdapterPredictor(Predictor):
    """Scores (regression) or emotion labels with probabilities (ERC) of an adapter on its backbone.

    Options of :meth:`predict`: ``decode`` (ERC: ``likelihood`` or ``generate``; default the
    manifest's ``erc_decode``), ``max_new_tokens`` (the greedy answer's length).
    """

    def __init__(self, manifest: dict[str, Any], model: Any, encoder: RowEncoder):
        super().__init__(manifest)
        self.model = model  # an MseAdapterModel (backbone shared, adapter its own)
        self.encoder = encoder
        self.spec = encoder.spec
        self.batch_size = 32

    @classmethod
    def load(cls, folder: str, manifest: dict[str, Any], device: str | None = None) -> MseAdapterPredictor:
        from safetensors.torch import load_file

        from sentiray.models.mse_adapter import AdapterShape, MseAdapter, MseAdapterModel

        device = device or "cpu"
        backbone, tokenizer = shared_backbone(
            manifest["backbone"], _serving_dtype(device), device, manifest.get("trust_remote_code", False)
        )
        with open(os.path.join(folder, ADAPTER_CONFIG)) as f:
            shape = AdapterShape.from_dict(json.load(f))
        adapter = MseAdapter(shape)
        adapter.load_state_dict(load_file(os.path.join(folder, ADAPTER_WEIGHTS)))
        spec = Spec.from_manifest(manifest)
        dims = None if shape.text_only else {"audio": shape.audio_dim, "vision": shape.vision_dim}
        encoder = RowEncoder(tokenizer, spec, dims)
        model = MseAdapterModel(backbone, adapter.to(device).eval(), encoder.layout)
        return cls(manifest, model, encoder)

    @classmethod
    def evaluate_options(cls, job: Any) -> dict[str, Any]:
        return {}

    @property
    def feature_dims(self) -> dict[str, int] | None:
        return self.encoder.dims

    def validate_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        known = {"decode": self.spec.erc_decode, "max_new_tokens": self.spec.max_new_tokens}
        unknown = set(options or {}) - set(known)
        if unknown:
            raise ValueError(f"unknown predict option(s) {sorted(unknown)}; known: {sorted(known)}")
        opts = {**known, **(options or {})}
        if opts["decode"] not in ("likelihood", "generate"):
            raise ValueError(f"decode: 'likelihood' or 'generate', got {opts['decode']!r}")
        return opts

    @torch.no_grad()
    def predict(self, rows: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        opts = self.validate_options(options)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        examples, where = [], []
        for i, row in enumerate(rows):
            try:
                examples.append(self.encoder.encode(row, with_answer=False))
                where.append(i)
            except ValueError as exc:  # predicted as the reference's fallback (0), and said why
                out[i] = self._fallback(str(exc))
        if examples:
            was_training = self.model.training
            self.model.eval()
            try:
                batch = to_device(self.encoder.collate(examples), self.model.backbone.device)
                for i, pred in zip(where, self._predict_batch(batch, opts)):
                    out[i] = pred
            finally:
                self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _fallback(self, why: str) -> dict[str, Any]:
        if self.spec.regression:
            return {"score": 0.0, "answer": None, "unparseable": True, "error": why}
        return {
            "label": self.labels[0],
            "index": 0,
            "answer": None,
            "unparseable": True,
            "error": why,
            "probs": {label: float("nan") for label in self.labels},
        }

    def _predict_batch(self, batch: dict[str, Any], opts: dict[str, Any]) -> list[dict[str, Any]]:
        embeds = self.model.inputs_embeds(batch)
        mask = batch["attention_mask"][:, : embeds.shape[1]]
        if self.spec.regression:
            preds = []
            for text in self._generate(embeds, mask, opts["max_new_tokens"]):
                value = parse_score(text)
                preds.append({"score": 0.0 if value is None else value, "answer": text, "unparseable": value is None})
            return preds
        probs = self._class_probs(embeds, mask)
        texts = self._generate(embeds, mask, opts["max_new_tokens"]) if opts["decode"] == "generate" else None
        preds = []
        for i, p in enumerate(probs):
            pred = {
                "probs": {label: float(v) for label, v in zip(self.labels, p)},
                "unparseable": False,
                "answer": None,
            }
            index = int(p.argmax())
            if texts is not None:
                parsed = parse_index(texts[i], len(self.labels))
                pred.update(answer=texts[i], unparseable=parsed is None, likelihood_label=self.labels[index])
                index = 0 if parsed is None else parsed  # the reference's fallback: class 0
            pred.update(index=index, label=self.labels[index])
            preds.append(pred)
        return preds

    def _generate(self, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy answers (only the new tokens), stopping at the end-of-sequence token."""
        tok = self.encoder.tokenizer
        eos = self.encoder.layout.eos_id
        backbone = self.model.backbone
        # Positions 0..L-1 as in training. Left to itself, generate would number only the attended
        # tokens (cumsum of the mask), so the text padding inside every prompt would shift the
        # prompt's positions away from those the adapter was trained with.
        positions = {}
        if "position_ids" in inspect.signature(backbone.forward).parameters:
            positions["position_ids"] = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        out = backbone.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=self.encoder.layout.pad_id,
            **positions,
        )
        texts = []
        for ids in out.tolist():
            if eos in ids:
                ids = ids[: ids.index(eos)]
            texts.append(tok.decode(ids, skip_special_tokens=True).strip())
        return texts

    def _class_probs(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes of each class index's answer log-likelihood."""
        backbone = self.model.backbone
        candidates = self.encoder.class_ids
        if all(len(c) == 1 for c in candidates):  # one forward pass: the next-token distribution
            logits = backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[:, -1].float()
            scores = torch.log_softmax(logits, -1)[:, [c[0] for c in candidates]]
            return torch.softmax(scores, -1).cpu()
        emb = backbone.get_input_embeddings()
        scores = []
        for ids in candidates:  # several tokens: teacher-force each candidate answer
            answer = torch.tensor(ids, device=embeds.device).expand(embeds.shape[0], -1)
            full = torch.cat([embeds, emb(answer).to(embeds.dtype)], 1)
            full_mask = torch.cat([mask, torch.ones_like(answer)], 1)
            logits = backbone(inputs_embeds=full, attention_mask=full_mask, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, embeds.shape[1] - 1 : -1], -1)
            scores.append(logp.gather(-1, answer.unsqueeze(-1)).squeeze(-1).sum(-1))
        return torch.softmax(torch.stack(scores, -1), -1).cpu()

    # ------------------------------------------------------------------ scoring

    def scored(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        if self.spec.regression:
            return {
                "id": row.get("id"),
                "pred": prediction["score"],
                "label": row.get("score"),
                "unparseable": prediction["unparseable"],
            }
        return {
            "id": row.get("id"),
            "pred": prediction["label"],
            "label": row.get("label"),
            "unparseable": prediction["unparseable"],
        }

    def metrics(self, rows: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
        from sentiray.evaluate import score

        return score.score(self.spec.scorer, [self.scored(r, p) for r, p in zip(rows, predictions)], labels=self.labels)

    def report(self, rows, predictions, options: dict[str, Any] | None = None) -> dict[str, Any]:
        report: dict[str, Any] = {
            "metrics": self.metrics(rows, predictions),
            "scorer": self.spec.scorer,
            "unparseable": sum(bool(p["unparseable"]) for p in predictions),
        }
        if not self.spec.regression:
            from sentiray.evaluate import metrics

            golds = [r["label"] for r in rows]
            report["labels"] = list(self.labels)
            report["confusion"] = metrics.classification(golds, [p["label"] for p in predictions], self.labels)[
                "confusion"
            ]
        return report

    def report_markdown(self, report: dict[str, Any]) -> str:
        lines = [
            f"Metrics: `{report['scorer']}` arithmetic (MMSA / MSE-Adapter); {report['unparseable']} answer(s) "
            "did not parse and count as 0.",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        lines += [f"| {k} | {v:.4f} |" for k, v in report["metrics"].items()]
        if "confusion" in report:
            labels = report["labels"]
            lines += [
                "",
                "Confusion matrix (rows gold, columns predicted):",
                "",
                "| gold \\ predicted | " + " | ".join(labels) + " |",
                "| --- |" + " --- |" * len(labels),
            ]
            lines += [
                f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                for label, row in zip(labels, report["confusion"])
            ]
        return "\n".join(lines) + "\n"

    def plots(self, rows, predictions, report) -> dict[str, Any]:
        from sentiray.evaluate import plots

        if "confusion" in report:
            return {"confusion.png": plots.confusion(report["confusion"], report["labels"], "MSE-Adapter emotions")}
        return {
            "scatter.png": scatter(
                [p["score"] for p in predictions],
                [r["score"] for r in rows],
                f"MSE-Adapter: predicted vs gold ({report['scorer']} scale)",
            )
        }


def scatter(preds: list[float], golds: list[float], title: str):
    """Predicted vs gold scores, with the diagonal."""
    import matplotlib.pyplot as plt

    from sentiray.evaluate import plots  # noqa: F401 (sets the Agg backend)

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(golds, preds, s=12, alpha=0.6)
    lo, hi = min(golds + preds, default=-1), max(golds + preds, default=1)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("gold score")
    ax.set_ylabel("predicted score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


MseAdapterFamily.predictor_class = MseAdapterPredictor

# Its own module (sentiray.families.mse_serving): the request/response schemas and the routes.
from sentiray.families.mse_serving import ENDPOINTS as _ENDPOINTS  # noqa: E402

MseAdapterFamily.endpoints = _ENDPOINTS
