"""MulCoT-RD's assistant and student (method.md, section 1), as a model family.

Each sample gives two sequences sharing the image: the c-stream (chain prompt -> the
reasoning chain) and the l-stream (label prompt -> ``"Prediction": "<label>"``), loss on
target tokens only.

- assistant (``mulcot.role: assistant``): L = w_c * CE_c + w_l * CE_l
- student (``mulcot.role: student``): per stream L_s = (1 - lambda) * CE_s + lambda *
  KL(teacher || student) at temperature tau over target tokens, the frozen assistant
  (``distill.teacher_path``) as teacher; L = w_c L_c + w_l L_l (+ an optional hidden-state
  MSE through a learned projection).

Prediction (:class:`MulCoTPredictor`): the label by the likelihood of each l-stream answer
(exact, one forward pass; gives class probabilities), and optionally a generated chain whose
label is parsed by the method's rule.
"""

from __future__ import annotations

import base64
import warnings
from typing import Any

import torch

from sentiray import prompts
from sentiray.config import ConfigError, JobConfig
from sentiray.families.base import Family, Predictor, Selection

# Precision of training -> dtype the frozen KD teacher is loaded in.
_TEACHER_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class _StudentWithProjection(torch.nn.Module):
    """The student plus the projection its hidden states are matched through; only the
    student is exported."""

    def __init__(self, student: torch.nn.Module, student_dim: int, teacher_dim: int):
        super().__init__()
        self.student = student
        self.projection = torch.nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, **kwargs: Any) -> Any:
        return self.student(**kwargs)


def _hidden_size(model: torch.nn.Module) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


def _unwrap(model: Any) -> Any:
    """The network inside a DeepSpeed engine (and inside the hidden-MSE wrapper)."""
    inner = getattr(model, "module", model)
    return inner.student if isinstance(inner, _StudentWithProjection) else inner


def row_image(row: dict[str, Any], size: int | None):
    """The row's image as RGB, resized to ``size`` x ``size`` (the family's input size); None
    without one. Rows may carry bytes (canonical), base64 text (pyfunc frames) or a URI."""
    from PIL import Image

    from sentiray.data import images

    data = row.get("image")
    if isinstance(data, str) and data:
        data = base64.b64decode(data.split(",", 1)[-1])
    image = images.load({**row, "image": data or None})
    if image is not None and size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


class MulCoTFamily(Family):
    name = "mulcot"
    section = "mulcot"
    tasks = ("msc", "masc")

    def __init__(self, job: JobConfig):
        super().__init__(job)
        self.processor = None
        self.encoder = None
        self.teacher = None
        self.teacher_encoder = None

    @property
    def role(self) -> str:
        return self.settings.role

    def run_name(self) -> str:
        return f"train-{self.role}"

    def registered_name(self) -> str:
        return f"sentiray-{self.role}"

    # ------------------------------------------------------------------ checks (driver)

    def check(self) -> None:
        from sentiray.data import schema

        super().check()
        if self.role == "student" and self.job.distill is None:
            raise ConfigError("mulcot.role 'student' needs a distill section (distill.teacher_path: the assistant)")
        column = self.settings.chain_column
        table = schema.read_table(self.data_uri(), "train")
        if column not in table.column_names:
            raise ConfigError(
                f"mulcot.chain_column: {self.data_uri()} has no column {column!r} (columns: "
                f"{', '.join(table.column_names)}); the teacher stage writes 'rationale'"
            )
        chains = [c for c in table.column(column).to_pylist() if c and str(c).strip()]
        if not chains:
            raise ConfigError(
                f"mulcot.chain_column: column {column!r} of {self.data_uri()} train is empty in every row"
            )

    # ------------------------------------------------------------------ model

    def _processors(self) -> None:
        """Tokenizers/processors only (what transform needs; no weights)."""
        from sentiray.models.inputs import PromptEncoder
        from sentiray.models.loading import load_processor

        if self.encoder is None:
            self.processor = load_processor(self.job.model.path, kind=self.job.model.kind)
            self.encoder = PromptEncoder(self.processor)
        if self.role == "student" and self.teacher_encoder is None:
            self.teacher_encoder = PromptEncoder(
                load_processor(self.job.distill.teacher_path, kind=self.job.model.kind)
            )

    def build_model(self) -> torch.nn.Module:
        from sentiray.models.loading import apply_lora, load_model, tokenizer_of

        model_cfg = self.job.model
        model, processor = load_model(model_cfg.path, kind=model_cfg.kind, dtype=model_cfg.dtype)
        self._processors()
        if self.role == "student":
            dtype = _TEACHER_DTYPES.get(self.job.train.precision, model_cfg.dtype)
            teacher, teacher_processor = load_model(self.job.distill.teacher_path, kind=model_cfg.kind, dtype=dtype)
            self.teacher = teacher.eval().requires_grad_(False)
            align_vocabularies(model, tokenizer_of(processor), tokenizer_of(teacher_processor), teacher)
        if model_cfg.lora.enabled:
            model = apply_lora(model, model_cfg.lora)
        if self.role == "student" and self.job.distill.hidden_mse:
            model = _StudentWithProjection(model, _hidden_size(model), _hidden_size(self.teacher))
        return model

    # ------------------------------------------------------------------ rows

    def _streams(self, row: dict[str, Any], encoder, image) -> tuple[Any, Any, str | None]:
        """(c, l, why not): each stream prompt + full target, or the reason the row cannot train."""
        s = self.settings
        chain = row.get(s.chain_column)
        c = encoder.encode(prompts.render("chain", row, s.prompts_dir), image, chain, None) if chain else None
        l_item = encoder.encode(
            prompts.render("label", row, s.prompts_dir), image, prompts.label_target(row["label"]), None
        )
        for name, item in (("chain", c), ("label", l_item)):
            if item is not None and len(item.input_ids) > s.max_length:
                return (
                    None,
                    None,
                    (
                        f"{name} stream needs {len(item.input_ids)} tokens ({item.prompt_len} of prompt), "
                        f"over mulcot.max_length={s.max_length}"
                    ),
                )
        return c, l_item, None

    def transform(self, row: dict[str, Any]) -> dict[str, Any]:
        self._processors()
        image = row_image(row, self.settings.image_size)
        c, l_item, why = self._streams(row, self.encoder, image)
        if why:
            return {"skip": why, "id": row["id"]}
        out: dict[str, Any] = {"id": row["id"], "c": c, "l": l_item}
        if self.teacher_encoder is not None:
            tc, tl, why = self._streams(row, self.teacher_encoder, image)
            if why:
                return {"skip": f"teacher {why}", "id": row["id"]}
            for name, s_item, t_item in (("chain", c, tc), ("label", l_item, tl)):
                if s_item is None:
                    continue
                s_target = s_item.input_ids[s_item.prompt_len :]
                t_target = t_item.input_ids[t_item.prompt_len :]
                if s_target != t_target:
                    raise ConfigError(
                        f"row {row['id']!r}: the {name} target tokenizes differently for student and assistant "
                        f"({len(s_target)} vs {len(t_target)} tokens): KD compares the two models token by token, "
                        "so they need the same tokenizer"
                    )
            out["teacher_c"], out["teacher_l"] = tc, tl
        return out

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        with_chain = [e for e in examples if e["c"] is not None]
        batch["l"] = self.encoder.collate([e["l"] for e in examples])
        if with_chain:
            batch["c"] = self.encoder.collate([e["c"] for e in with_chain])
        if self.teacher_encoder is not None:
            batch["teacher_l"] = self.teacher_encoder.collate([e["teacher_l"] for e in examples])
            if with_chain:
                batch["teacher_c"] = self.teacher_encoder.collate([e["teacher_c"] for e in with_chain])
        return batch

    # ------------------------------------------------------------------ loss

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from sentiray.train import losses

        s = self.settings
        weights = {"c": s.w_chain, "l": s.w_label}
        device = next(model.parameters()).device
        if self.teacher is not None and next(self.teacher.parameters()).device != device:
            # DeepSpeed moved the student to its GPU; the frozen assistant (loaded outside
            # the engine) must follow, or its forward fails on mixed devices.
            self.teacher.to(device)
        total = None
        parts: dict[str, float] = {}
        for key in ("c", "l"):
            # A micro-batch whose rows have no chain still runs a c-stream forward (on the
            # l-stream inputs, weight 0): under ZeRO-3 every rank must run the same forward
            # passes, or the parameter gathers of the ranks stop matching and they hang.
            present = key in batch
            stream_key = key if present else "l"
            inputs = _to(batch[stream_key], device, model)
            labels = inputs.pop("labels")
            if self.teacher is None:
                _, logits = losses.target_forward(model, inputs, labels)
                stream = losses.gathered_ce(logits, losses.target_tokens(labels))
                if present:
                    parts[f"ce_{key}"] = float(stream.detach())
            else:
                teacher_inputs = _to(batch[f"teacher_{stream_key}"], device, self.teacher)
                stream = self._distill_stream(model, inputs, labels, teacher_inputs, key, parts if present else {})
            weight = weights[key] if present else 0.0
            total = weight * stream if total is None else total + weight * stream
        parts["loss"] = float(total.detach())
        return total, parts

    def _distill_stream(self, model, inputs, labels, teacher_inputs, key, parts) -> torch.Tensor:
        from sentiray.train import losses

        distill = self.job.distill
        want_hidden = distill.hidden_mse
        with torch.no_grad():
            t_labels = teacher_inputs.pop("labels")
            t_out, t_target = losses.target_forward(
                self.teacher, teacher_inputs, t_labels, output_hidden_states=want_hidden
            )
        out, s_target = losses.target_forward(model, inputs, labels, output_hidden_states=want_hidden)
        stream, ce, kl = losses.distill_stream_loss(
            s_target, losses.target_tokens(labels), t_target, distill.lambda_kd, distill.tau, distill.scale_tau2
        )
        parts[f"ce_{key}"], parts[f"kl_{key}"] = float(ce.detach()), float(kl.detach())
        if want_hidden:
            s_hidden = out.hidden_states[-1][losses.target_mask(labels)]
            t_hidden = t_out.hidden_states[-1][losses.target_mask(t_labels)]
            projection = getattr(model, "module", model).projection
            mse = losses.hidden_mse(s_hidden, t_hidden, projection)
            parts[f"hidden_mse_{key}"] = float(mse.detach())
            stream = stream + distill.hidden_weight * mse
        return stream

    # ------------------------------------------------------------------ selection, prediction, export

    def selection(self) -> Selection:
        # method.md: best epoch by dev accuracy, ties by weighted-F1 (MSC) or macro-F1 (MASC)
        tie = "dev_weighted_f1" if self.task == "msc" else "dev_macro_f1"
        return Selection((("dev_accuracy", "max"), (tie, "max")))

    def predictor(self, model: torch.nn.Module) -> MulCoTPredictor:
        from sentiray.models.generation import Generator

        self._processors()
        return MulCoTPredictor(self.manifest(), Generator(_unwrap(model), self.processor))

    def export_parameters(self, model: torch.nn.Module) -> list[Any]:
        return list(_unwrap(model).parameters())

    def export(self, model: torch.nn.Module, out_dir: str) -> None:
        from sentiray.models.loading import save_model

        save_model(_unwrap(model), self.processor, out_dir, merge_lora=self.job.model.lora.merge_on_save)

    def manifest(self) -> dict[str, Any]:
        s = self.settings
        return {
            **super().manifest(),
            "kind": self.job.model.kind,
            "role": s.role,
            "image_size": s.image_size,
            "prompts_dir": s.prompts_dir,
        }


# --------------------------------------------------------------------------- inference


class MulCoTPredictor(Predictor):
    """Label by answer likelihood (+ probabilities); optionally a generated reasoning chain.

    Options of :meth:`predict`: ``chain`` (bool, default False), ``max_new_tokens`` (256),
    ``temperature`` (0: greedy).
    """

    supports_chat = True
    OPTIONS = {"chain": False, "max_new_tokens": 256, "temperature": 0.0}

    def __init__(self, manifest: dict[str, Any], generator: Any):
        super().__init__(manifest)
        self.generator = generator
        self.image_size = manifest.get("image_size")
        self.prompts_dir = manifest.get("prompts_dir")

    @classmethod
    def load(cls, folder: str, manifest: dict[str, Any], device: str | None = None) -> MulCoTPredictor:
        from sentiray.models.generation import Generator
        from sentiray.models.loading import load_model

        model, processor = load_model(folder, kind=manifest.get("kind", "vlm"), for_generation=True)
        if device:
            model = model.to(device)
        return cls(manifest, Generator(model, processor))

    @classmethod
    def evaluate_options(cls, job: JobConfig) -> dict[str, Any]:
        s = job.section("mulcot")
        return {"chain": s.generate_chains, "max_new_tokens": s.chain_max_new_tokens}

    def validate_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        unknown = set(options or {}) - set(self.OPTIONS)
        if unknown:
            raise ValueError(f"unknown predict option(s) {sorted(unknown)}; known: {sorted(self.OPTIONS)}")
        return {**self.OPTIONS, **(options or {})}

    def _row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "task": row.get("task") or ("masc" if row.get("aspect") else self.task)}

    @torch.no_grad()
    def predict(self, rows: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from sentiray.prompts.parsing import parse_label

        opts = self.validate_options(options)
        rows = [self._row(r) for r in rows]
        net = self.generator.model
        was_training = net.training
        net.eval()
        try:
            imgs = [row_image(r, self.image_size) for r in rows]
            scores = self.generator.label_logprobs(
                [prompts.render("label", r, self.prompts_dir) for r in rows], imgs, self.labels
            )
            probs = torch.softmax(scores, -1)
            chains = [None] * len(rows)
            if opts["chain"]:
                chains = self.generator.generate(
                    [prompts.render("chain", r, self.prompts_dir) for r in rows],
                    imgs,
                    max_new_tokens=opts["max_new_tokens"],
                    temperature=opts["temperature"],
                )
        finally:
            net.train(was_training)
        out = []
        for p, chain in zip(probs, chains):
            pred: dict[str, Any] = {
                "label": self.labels[int(p.argmax())],
                "probs": {label: float(v) for label, v in zip(self.labels, p)},
            }
            if chain is not None:
                pred.update(
                    chain=chain.text, chain_label=parse_label(chain.text, self.labels), chain_tokens=chain.new_tokens
                )
            out.append(pred)
        return out

    def report(self, rows, predictions, options: dict[str, Any] | None = None) -> dict[str, Any]:
        from sentiray.evaluate import metrics

        golds = [r["label"] for r in rows]
        report: dict[str, Any] = {
            "labels": list(self.labels),
            "label": metrics.classification(golds, [p["label"] for p in predictions], self.labels),
        }
        flat = {f"label_{k}": report["label"][k] for k in ("accuracy", "macro_f1", "weighted_f1")}
        if predictions and "chain" in predictions[0]:
            report["chain"] = metrics.classification(golds, [p["chain_label"] for p in predictions], self.labels)
            flat.update(
                {f"chain_{k}": report["chain"][k] for k in ("accuracy", "macro_f1", "weighted_f1", "unparseable")}
            )
            reference = (options or {}).get("reference_column") or _reference_column(rows)
            if reference:
                refs = [r.get(reference) or "" for r in rows]
                report["reasoning"] = metrics.reasoning([p["chain"] or "" for p in predictions], refs)
                report["reference"] = reference
                flat.update({f"reasoning_{k}": v for k, v in report["reasoning"].items() if v is not None})
        report["metrics"] = flat
        return report

    def plots(self, rows, predictions, report) -> dict[str, Any]:
        from sentiray.evaluate import plots

        return {"confusion.png": plots.confusion(report["label"]["confusion"], report["labels"], "label prediction")}

    def report_markdown(self, report: dict[str, Any]) -> str:
        lines = ["| prediction | accuracy | macro-F1 | weighted-F1 | unparseable |", "| --- | --- | --- | --- | --- |"]
        for name in ("label", "chain"):
            m = report.get(name)
            if m:
                lines.append(
                    f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['weighted_f1']:.4f} | "
                    f"{m['unparseable']} |"
                )
        r = report.get("reasoning")
        if r:
            lines += ["", f"Reasoning (vs `{report['reference']}`):", "", "| metric | value |", "| --- | --- |"]
            lines += [f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in r.items()]
        lines += [
            "",
            "Confusion matrix (label prediction; rows gold, columns predicted):",
            "",
            "| gold \\ predicted | " + " | ".join(report["labels"]) + " |",
            "| --- |" + " --- |" * len(report["labels"]),
        ]
        for label, row in zip(report["labels"], report["label"]["confusion"]):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines) + "\n"

    def generate(
        self, prompts_: list[str], images: list[Any], max_new_tokens: int, temperature: float = 0.0, **kwargs: Any
    ) -> list[Any]:
        return self.generator.generate(
            prompts_, images, max_new_tokens=max_new_tokens, temperature=temperature, **kwargs
        )


def _reference_column(rows: list[dict[str, Any]]) -> str | None:
    for column in ("rationale", "gold_chain"):
        if rows and rows[0].get(column):
            return column
    return None


def _to(batch: dict[str, torch.Tensor], device: torch.device, model: Any) -> dict[str, torch.Tensor]:
    dtype = next(getattr(model, "module", model).parameters()).dtype
    return {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in batch.items()}


def align_vocabularies(student: torch.nn.Module, student_tok: Any, teacher_tok: Any, teacher: torch.nn.Module) -> None:
    """Give the student the assistant's vocabulary so their token distributions compare.

    Works when the student's tokenizer is the assistant's or a prefix of it (same ids for
    the shared tokens, as within one model family); otherwise KD over token
    distributions is meaningless and we refuse.
    """
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    mismatched = [tok for tok, i in s_vocab.items() if t_vocab.get(tok) != i]
    if mismatched:
        raise ConfigError(
            f"student and assistant tokenizers disagree on {len(mismatched)} tokens (e.g. {mismatched[:3]}): "
            "distillation over token distributions needs a shared vocabulary; use a student of the assistant's family"
        )
    t_size = teacher.get_input_embeddings().weight.shape[0]
    if student.get_input_embeddings().weight.shape[0] != t_size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "mean_resizing" advice, irrelevant for an aligned vocabulary
            student.resize_token_embeddings(t_size)


MulCoTFamily.predictor_class = MulCoTPredictor


# --------------------------------------------------------------------------- HTTP endpoint
# Its own module (sentiray.families.mulcot_serving): the request/response schemas and the
# parse/respond functions of POST /v1/sentiment; see serve/README.md, "Endpoints of a family".
from sentiray.families.mulcot_serving import ENDPOINTS as _ENDPOINTS  # noqa: E402

MulCoTFamily.endpoints = _ENDPOINTS
