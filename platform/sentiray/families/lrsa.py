"""LRSA (method.md, section 2) as a model family: a small encoder with the teacher's
rationales fused by dual cross-attention (:mod:`sentiray.models.lrsa`), on aspect data.

- ``mabsa`` data (spans): JMASA, a BIO-with-polarity tag per word, decoded to (start, end,
  polarity) spans; MATE is the same spans without their polarity. Selected by dev JMASA F1
  (ties: MATE F1).
- ``masc`` data (one row per given aspect): the aspect's polarity. Selected by dev accuracy
  (ties: macro-F1).

Metrics through ``sentiray score`` (:mod:`sentiray.evaluate.spans`: VLP-MABSA's arithmetic).
Parameter groups: ``encoders`` (the pretrained text / rationale / vision encoders) and ``new``
(projections, cross-attention, heads): ``train.param_groups.encoders.lr`` gives the encoders
their lower rate. ``model.lora`` adapts the text (and rationale) encoder with LoRA.
"""

from __future__ import annotations

import base64
from typing import Any

import torch

from sentiray.config import ConfigError, JobConfig
from sentiray.data.schema import SENTIMENT_LABELS
from sentiray.families.base import Family, Predictor, Selection

# Rows the family reads besides the rationale / region columns its settings name.
BASE_COLUMNS = ("id", "task", "text", "aspect", "words", "spans", "image", "image_uri", "label")


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


class LrsaFamily(Family):
    name = "lrsa"
    section = "lrsa"
    tasks = ("mabsa", "masc")
    path_fields = ("lrsa.vision_model", "lrsa.rationale_encoder")

    def __init__(self, job: JobConfig):
        super().__init__(job)
        self._inputs = None

    @property
    def columns(self) -> tuple[str, ...]:  # type: ignore[override]
        s = self.settings
        extra = [s.text_rationale_column] if s.reads_text_rationale else []
        extra += [s.image_rationale_column] if s.reads_image_rationale else []
        extra += [s.region_column] if s.image == "regions" else []
        return BASE_COLUMNS + tuple(extra)

    def arch(self):
        from sentiray.models.lrsa import LrsaArch

        return LrsaArch.from_settings(self.task, self.settings)

    # ------------------------------------------------------------------ checks (driver)

    def check(self) -> None:
        super().check()
        s = self.settings
        unknown = set(self.job.train.param_groups) - {"encoders", "new"}
        if unknown:
            raise ConfigError(
                f"train.param_groups: the lrsa family has the groups 'encoders' (text, rationale and vision "
                f"encoders) and 'new' (the layers it adds), not {sorted(unknown)}"
            )
        if s.image == "vision_model" and not s.vision_model:
            raise ConfigError(
                "lrsa.vision_model: required with lrsa.image 'vision_model' (or set lrsa.image: regions | none)"
            )
        if self.job.model.kind != "encoder":
            raise ConfigError(
                f"model.kind: the lrsa family's model.path is a text encoder (kind 'encoder'), "
                f"got {self.job.model.kind!r}"
            )
        self._check_models()
        self._check_columns()
        self._check_lora()

    def _check_models(self) -> None:
        """Every model folder loads (config only), and the heads divide the encoder's width."""
        from transformers import AutoConfig

        from sentiray.models.loading import ModelNotFoundError, resolve_model_path
        from sentiray.models.lrsa import hidden_size

        s = self.settings
        for field, path in (
            ("model.path", self.job.model.path),
            ("lrsa.vision_model", s.vision_model),
            ("lrsa.rationale_encoder", s.rationale_encoder),
        ):
            if path and (field != "lrsa.vision_model" or s.image == "vision_model"):
                try:
                    resolve_model_path(path)
                except ModelNotFoundError as exc:
                    raise ConfigError(f"{field}: {exc}") from None
        width = hidden_size(AutoConfig.from_pretrained(resolve_model_path(self.job.model.path)))
        if width % s.cross_heads:
            raise ConfigError(
                f"lrsa.cross_heads: {s.cross_heads} heads do not divide the encoder's hidden size {width}"
            )

    def _check_columns(self) -> None:
        """The rationale (and region) columns the settings name exist and are not all empty."""
        from sentiray.data import schema

        s = self.settings
        names = _column_names(self.data_uri())
        for column in (c for c in self.columns if c not in BASE_COLUMNS):
            field = {
                s.text_rationale_column: "lrsa.text_rationale_column",
                s.image_rationale_column: "lrsa.image_rationale_column",
            }.get(column, "lrsa.region_column")
            if column not in names:
                hint = (
                    "the teacher stage writes it with teacher.lrsa_rationales: true; or set lrsa.rationales: none"
                    if field != "lrsa.region_column"
                    else "add the features to the data, or set lrsa.image"
                )
                raise ConfigError(f"{field}: {self.data_uri()} train has no column {column!r} ({hint})")
            values = schema.read_table(self.data_uri(), "train", [column]).column(column)
            if values.null_count == len(values):
                raise ConfigError(f"{field}: column {column!r} of {self.data_uri()} train is empty in every row")

    def _check_lora(self) -> None:
        """LoRA targets must name modules of the encoder (read from its config, no weights)."""
        lora = self.job.model.lora
        if not lora.enabled:
            return
        from transformers import AutoConfig, AutoModel

        from sentiray.models.loading import resolve_model_path

        with torch.device("meta"):
            net = AutoModel.from_config(AutoConfig.from_pretrained(resolve_model_path(self.job.model.path)))
        leaves = {name.rsplit(".", 1)[-1] for name, _ in net.named_modules()}
        if not set(lora.target_modules) & leaves:
            raise ConfigError(
                f"model.lora.target_modules: none of {lora.target_modules} is a module of the encoder "
                f"(e.g. BERT: query, key, value, dense; it has {sorted(leaves)[:12]} ...)"
            )

    # ------------------------------------------------------------------ model

    def inputs(self):
        """Tokenizers and the image processor (no weights): what ``transform`` needs."""
        if self._inputs is None:
            from sentiray.models import lrsa
            from sentiray.models.loading import load_processor

            s = self.settings
            tokenizer = load_processor(self.job.model.path, kind="encoder")
            rationale_tok = load_processor(s.rationale_encoder, kind="encoder") if s.rationale_encoder else None
            processor = None
            if s.image == "vision_model":
                from transformers import AutoImageProcessor

                from sentiray.models.loading import resolve_model_path

                processor = AutoImageProcessor.from_pretrained(resolve_model_path(s.vision_model))
            self._inputs = lrsa.LrsaInputs(
                self.arch(),
                tokenizer,
                rationale_tok,
                processor,
                s.text_rationale_column,
                s.image_rationale_column,
                s.region_column,
            )
        return self._inputs

    def build_model(self) -> torch.nn.Module:
        from sentiray.models import lrsa
        from sentiray.models.loading import apply_lora

        s, model_cfg = self.settings, self.job.model
        encoder, _ = lrsa.load_encoder(model_cfg.path, model_cfg.dtype)
        rationale_encoder = lrsa.load_encoder(s.rationale_encoder, model_cfg.dtype)[0] if s.rationale_encoder else None
        vision = None
        if s.image == "vision_model":
            vision = lrsa.load_vision(s.vision_model)[0]
            vision.requires_grad_(not s.freeze_vision)
        if model_cfg.lora.enabled:
            encoder = apply_lora(encoder, model_cfg.lora, language_model_only=False)
            if rationale_encoder is not None:
                rationale_encoder = apply_lora(rationale_encoder, model_cfg.lora, language_model_only=False)
        model = lrsa.LrsaModel(self.arch(), encoder, vision, rationale_encoder)
        self._freeze_unreached(model)
        return model

    def _freeze_unreached(self, model: torch.nn.Module) -> None:
        """Freeze what no loss reaches (a BERT pooler, CLIP's post-layernorm of the pooled token,
        BART's decoder): parameters without gradients upset distributed training. Decided by one
        backward pass on the first train rows, the same on every rank."""
        from sentiray.data import schema

        rows = schema.read_rows(self.data_uri(), "train", list(self.columns))
        examples = [e for e in (self.transform(r) for r in rows[:8]) if "skip" not in e][:2]
        if not examples:
            return
        model.eval()
        loss, _ = self.loss(model, self.collate(examples))
        loss.backward()
        frozen = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        for name, p in model.named_parameters():
            p.grad = None
            if name in frozen:
                p.requires_grad_(False)
        model.train()
        if frozen:
            print(f"[lrsa] {len(frozen)} parameter tensor(s) no loss reaches are frozen (e.g. {frozen[0]})", flush=True)

    def param_groups(self, model: torch.nn.Module) -> dict[str, list[Any]]:
        net = _unwrap(model)
        encoders = net.encoder_parameters()
        ids = {id(p) for p in encoders}
        return {"encoders": encoders, "new": [p for p in net.parameters() if p.requires_grad and id(p) not in ids]}

    # ------------------------------------------------------------------ rows and loss

    def transform(self, row: dict[str, Any]) -> dict[str, Any]:
        example = self.inputs().encode(row, train=True)
        if "skip" in example:
            return example
        if (self.task == "mabsa" and "labels" not in example) or (self.task == "masc" and "label" not in example):
            return {"skip": "no gold spans / label", "id": row.get("id")}
        return example

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.inputs().collate(examples)

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(_unwrap(model).parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch)["logits"]
        if self.task == "mabsa":
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100
            )
            return loss, {"loss": float(loss.detach()), "ce_tags": float(loss.detach())}
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        return loss, {"loss": float(loss.detach()), "ce_label": float(loss.detach())}

    # ------------------------------------------------------------------ selection, prediction, export

    def selection(self) -> Selection:
        if self.task == "mabsa":
            return Selection((("dev_jmasa_f1", "max"), ("dev_mate_f1", "max")))
        return Selection((("dev_accuracy", "max"), ("dev_macro_f1", "max")))

    def predictor(self, model: torch.nn.Module) -> LrsaPredictor:
        return LrsaPredictor(self.manifest(), _unwrap(model), self.inputs())

    def export(self, model: torch.nn.Module, out_dir: str) -> None:
        from sentiray.models import lrsa

        lrsa.save(_unwrap(model), self.inputs(), out_dir, merge_lora=self.job.model.lora.merge_on_save)

    def manifest(self) -> dict[str, Any]:
        import dataclasses

        arch = self.arch()
        return {
            **super().manifest(),
            "kind": "encoder",
            "takes_images": arch.image != "none",
            "lrsa": dataclasses.asdict(arch),
        }


def _column_names(data_uri: str) -> set[str]:
    """The train split's columns, from the Parquet footers (no rows read)."""
    import pyarrow.parquet as pq

    from sentiray.data import schema, storage

    names: set[str] = set()
    for uri in schema.split_uris(data_uri, "train"):
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            names |= set(pq.ParquetFile(f).schema_arrow.names)
    return names


# --------------------------------------------------------------------------- inference


def _row_for_model(row: dict[str, Any], use_rationales: bool, columns: dict[str, str]) -> dict[str, Any]:
    """A request or data row as the inputs read it: base64 images decoded, rationales withheld."""
    out = dict(row)
    image = out.get("image")
    if isinstance(image, str):
        out["image"] = base64.b64decode(image.split(",", 1)[-1]) if image else None
    if not use_rationales:
        for column in columns.values():
            out[column] = None
    return out


class LrsaPredictor(Predictor):
    """Aspects with their polarity (mabsa), or the polarity of a given aspect (masc).

    Options of :meth:`predict`: ``rationales`` (bool, default True): read the rows' rationale
    columns; False answers as an endpoint with no teacher does. ``teacher`` (the endpoint's
    settings, :class:`~sentiray.families.lrsa_serving.LrsaSettings` as a dict): ask that
    OpenAI-compatible teacher for the rationales a row lacks. Each prediction says where its
    rationales came from (``rationale_sources``: given / teacher / none, and why none).

    A mabsa model asked about a row with an ``aspect`` also gives that aspect's ``label`` and
    ``probs``: its polarity tags over the aspect's words, summed per polarity.
    """

    OPTIONS = {"rationales": True, "teacher": None}

    def __init__(self, manifest: dict[str, Any], model: Any, inputs: Any):
        super().__init__(manifest)
        self.model, self.inputs = model, inputs

    @classmethod
    def load(cls, folder: str, manifest: dict[str, Any], device: str | None = None) -> LrsaPredictor:
        from sentiray.models import lrsa

        model, inputs = lrsa.load(folder, device=device)
        return cls(manifest, model, inputs)

    @classmethod
    def evaluate_options(cls, job: JobConfig) -> dict[str, Any]:
        s = job.lrsa
        return {"rationales": True, "compare_without_rationales": s.evaluate_without_rationales if s else True}

    def validate_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        opts = {k: v for k, v in (options or {}).items() if k != "compare_without_rationales"}
        unknown = set(opts) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"unknown predict option(s) {sorted(unknown)}; known: {sorted(self.OPTIONS)}")
        return {**self.OPTIONS, **opts}

    @torch.no_grad()
    def predict(self, rows: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        opts = self.validate_options(options)
        rows = [_row_for_model(r, opts["rationales"], self.inputs.columns) for r in rows]
        sources = self._fill_rationales(rows, opts["teacher"])
        encoded = [self.inputs.encode(r) for r in rows]
        good = [i for i, e in enumerate(encoded) if "skip" not in e]
        probs = dict(zip(good, self._probabilities([encoded[i] for i in good]))) if good else {}
        kinds = self.inputs.arch.kinds
        out = []
        for i, (row, example) in enumerate(zip(rows, encoded)):
            if i not in probs:  # a row the model cannot read: no answer, and why
                out.append({"spans": []} if self.task == "mabsa" else {"label": None, "probs": {}})
                out[-1].update(rationales=[], rationale_sources=sources[i], skipped=example["skip"])
                continue
            used = [k for k, present in zip(kinds, example.get("rationale_present", [])) if present]
            pred = self._spans(row, example, probs[i]) if self.task == "mabsa" else self._label(probs[i])
            out.append({**pred, "rationales": used, "rationale_sources": sources[i]})
        return out

    def _fill_rationales(self, rows: list[dict[str, Any]], teacher: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Ask the teacher (if given) for the rationales rows lack; per row, where each came from."""
        kinds = self.inputs.arch.kinds
        columns = self.inputs.columns
        given = [{k: bool(r.get(columns[k])) for k in kinds} for r in rows]
        reasons: list[dict[str, str]] = [{} for _ in rows]
        if teacher and kinds:
            from sentiray.families.lrsa_serving import write_rationales

            reasons = write_rationales(rows, kinds, teacher)
        sources = []
        for row, had, why in zip(rows, given, reasons):
            entry = {}
            for k in kinds:
                if had[k]:
                    entry[k] = {"source": "given", "text": row[columns[k]]}
                elif row.get(columns[k]):
                    entry[k] = {"source": "teacher", "text": row[columns[k]]}
                else:
                    entry[k] = {
                        "source": "none",
                        "reason": why.get(k) or ("not given, and no teacher asked" if not teacher else "not given"),
                    }
            sources.append(entry)
        return sources

    def _probabilities(self, examples: list[dict[str, Any]]) -> torch.Tensor:
        net = self.model
        was_training = net.training
        net.eval()
        try:
            device = next(net.parameters()).device
            batch = {k: v.to(device) for k, v in self.inputs.collate(examples).items()}
            return torch.softmax(net(**batch)["logits"].float(), -1).cpu()
        finally:
            net.train(was_training)

    def _spans(self, row: dict[str, Any], example: dict[str, Any], probs: torch.Tensor) -> dict[str, Any]:
        from sentiray.evaluate import spans as span_tags
        from sentiray.models.lrsa import row_words

        words = row_words(row)
        tags, confidence = [], []
        for token in example["first_token"]:
            if token < 0:  # cut off by lrsa.max_length: no tag
                tags.append(span_tags.OUTSIDE)
                confidence.append(1.0)
                continue
            best = int(probs[token].argmax())
            tags.append(span_tags.TAGS[best])
            confidence.append(float(probs[token, best]))
        found = []
        for start, end, polarity in span_tags.from_bio(tags):
            found.append(
                {
                    "term": " ".join(words[start:end]),
                    "start": start,
                    "end": end,
                    "polarity": polarity,
                    "probability": sum(confidence[start:end]) / (end - start),
                }
            )
        out: dict[str, Any] = {"spans": found}
        if row.get("aspect"):
            out.update(self._aspect_polarity(row, words, example, probs))
        return out

    def _aspect_polarity(self, row, words, example, probs) -> dict[str, Any]:
        """A given aspect's polarity from the tags over its words: P(B-X) + P(I-X) summed, per X."""
        from sentiray.evaluate import spans as span_tags
        from sentiray.models.lrsa import find_words

        aspect = row["aspect"].split()
        start = find_words(words, aspect)
        tokens = [example["first_token"][w] for w in range(start, start + len(aspect))] if start is not None else []
        tokens = [t for t in tokens if t >= 0]
        mass = {label: 0.0 for label in SENTIMENT_LABELS}
        for t in tokens:
            for tag, p in zip(span_tags.TAGS, probs[t].tolist()):
                if tag != span_tags.OUTSIDE:
                    mass[span_tags.TAG_POLARITY[tag.split("-")[1]]] += p
        total = sum(mass.values())
        if not total:
            return {"label": None, "probs": {}}
        normed = {k: v / total for k, v in mass.items()}
        return {"label": max(normed, key=normed.get), "probs": normed}

    def _label(self, probs: torch.Tensor) -> dict[str, Any]:
        return {
            "label": SENTIMENT_LABELS[int(probs.argmax())],
            "probs": {label: float(v) for label, v in zip(SENTIMENT_LABELS, probs)},
        }

    # ------------------------------------------------------------------ scoring and reports

    def scored(self, row: dict[str, Any], prediction: dict[str, Any]) -> dict[str, Any]:
        if self.task != "mabsa":
            return super().scored(row, prediction)
        gold = [[s["start"], s["end"], s["polarity"]] for s in row.get("spans") or []]
        pred = [[s["start"], s["end"], s["polarity"]] for s in prediction["spans"]]
        return {"id": row.get("id"), "pred": pred, "gold": gold}

    def report(self, rows, predictions, options: dict[str, Any] | None = None) -> dict[str, Any]:
        from sentiray.evaluate.stage import predict_rows

        report: dict[str, Any] = {
            "metrics": dict(self.metrics(rows, predictions)),
            "confusion": self._confusion(rows, predictions),
        }
        if (options or {}).get("compare_without_rationales") and self.inputs.arch.kinds:
            bare = predict_rows(self, rows, self.batch_size, {"rationales": False}, desc="evaluate (no rationales)")
            report["metrics"].update({f"norat_{k}": v for k, v in self.metrics(rows, bare).items()})
        return report

    def _confusion(self, rows, predictions) -> list[list[int]]:
        """Gold x predicted polarity: every row (masc), or the spans found exactly (mabsa)."""
        index = {label: i for i, label in enumerate(SENTIMENT_LABELS)}
        matrix = [[0] * 3 for _ in SENTIMENT_LABELS]
        for row, pred in zip(rows, predictions):
            if self.task == "masc":
                if row.get("label") in index and pred["label"] in index:
                    matrix[index[row["label"]]][index[pred["label"]]] += 1
                continue
            gold = {(s["start"], s["end"]): s["polarity"] for s in row.get("spans") or []}
            for s in pred["spans"]:
                if (s["start"], s["end"]) in gold:
                    matrix[index[gold[(s["start"], s["end"])]]][index[s["polarity"]]] += 1
        return matrix

    def report_markdown(self, report: dict[str, Any]) -> str:
        m = report["metrics"]
        if self.task == "mabsa":
            lines = [
                "| rationales | JMASA P | JMASA R | JMASA F1 | MATE P | MATE R | MATE F1 | MASC acc | MASC F1 |",
                "| --- |" + " --- |" * 8,
            ]
            for prefix, name in (("", "as given"), ("norat_", "withheld")):
                if f"{prefix}jmasa_f1" in m:
                    keys = ("jmasa_p", "jmasa_r", "jmasa_f1", "mate_p", "mate_r", "mate_f1", "masc_acc", "masc_f1")
                    lines.append(f"| {name} | " + " | ".join(f"{100 * m[prefix + k]:.2f}" for k in keys) + " |")
        else:
            lines = [
                "| rationales | accuracy | macro-F1 | weighted-F1 | MASC F1 (VLP-MABSA) |",
                "| --- | --- | --- | --- | --- |",
            ]
            for prefix, name in (("", "as given"), ("norat_", "withheld")):
                if f"{prefix}accuracy" in m:
                    keys = ("accuracy", "macro_f1", "weighted_f1", "masc_f1")
                    lines.append(f"| {name} | " + " | ".join(f"{100 * m[prefix + k]:.2f}" for k in keys) + " |")
        lines += [
            "",
            "Polarity confusion (rows gold, columns predicted"
            + ("; spans found exactly" if self.task == "mabsa" else "")
            + "):",
            "",
            "| gold \\ predicted | " + " | ".join(SENTIMENT_LABELS) + " |",
            "| --- |" + " --- |" * 3,
        ]
        for label, row in zip(SENTIMENT_LABELS, report["confusion"]):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines) + "\n"

    def plots(self, rows, predictions, report) -> dict[str, Any]:
        from sentiray.evaluate import plots

        figures = {"confusion.png": plots.confusion(report["confusion"], list(SENTIMENT_LABELS), "polarity")}
        if self.task == "mabsa":
            figures["spans.png"] = span_bars(report["metrics"])
        return figures


def span_bars(metrics: dict[str, float]):
    """P / R / F1 of JMASA, MATE and MASC, with and without rationales when both were scored."""
    from sentiray.evaluate.plots import plt

    groups = [("JMASA", "jmasa"), ("MATE", "mate")]
    variants = [
        (p, n) for p, n in (("", "rationales as given"), ("norat_", "rationales withheld")) if f"{p}jmasa_f1" in metrics
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, width = [], 0.8 / max(1, len(variants))
    names = [f"{g} {m}" for g, _ in groups for m in ("P", "R", "F1")] + ["MASC acc", "MASC F1"]
    keys = [f"{k}_{m}" for _, k in groups for m in ("p", "r", "f1")] + ["masc_acc", "masc_f1"]
    for j, (prefix, name) in enumerate(variants):
        values = [100 * metrics[prefix + k] for k in keys]
        ax.bar([i + j * width for i in range(len(keys))], values, width, label=name)
        labels = names
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(keys))], labels, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("aspect spans (VLP-MABSA metrics)")
    ax.legend()
    fig.tight_layout()
    return fig


LrsaFamily.predictor_class = LrsaPredictor

# Its own module: the request/response schemas and the request-time teacher (/v1/aspects, /v1/sentiment).
from sentiray.families.lrsa_serving import ENDPOINTS as _ENDPOINTS  # noqa: E402

LrsaFamily.endpoints = _ENDPOINTS
