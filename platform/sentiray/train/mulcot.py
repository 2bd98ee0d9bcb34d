"""MulCoT-RD's assistant and student (method.md, section 1).

Each sample gives two sequences sharing the image: the c-stream (chain prompt -> the
reasoning chain) and the l-stream (label prompt -> ``"Prediction": "<label>"``), with the
loss on target tokens only.

- assistant: L = w_c * CE_c + w_l * CE_l
- student:   per stream L_s = (1 - lambda) * CE_s + lambda * KL(teacher || student) at
  temperature tau over target tokens, the frozen assistant as teacher; L = w_c L_c + w_l L_l
  (+ an optional hidden-state MSE through a learned projection).
"""

from __future__ import annotations

from typing import Any

import torch

from sentiray.config import ConfigError, JobConfig
from sentiray.data import images, schema
from sentiray.models.inputs import Encoded, PromptEncoder
from sentiray.models.loading import apply_lora, load_model, save_model, tokenizer_of
from sentiray import prompts
from sentiray.train import losses
from sentiray.train.families import Family


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


class MulCoTFamily(Family):
    metric = "dev_accuracy"
    mode = "max"

    def __init__(self, job: JobConfig):
        super().__init__(job)
        self.train_cfg = job.train
        self.task = None
        self.labels: tuple[str, ...] = ()
        self.processor = None
        self.encoder: PromptEncoder | None = None
        self.teacher = None
        self.teacher_encoder: PromptEncoder | None = None

    # ------------------------------------------------------------------ setup

    def check(self) -> None:
        if self.train_cfg.role == "student" and self.job.distill is None:
            raise ConfigError("train.role 'student' needs a distill section (distill.teacher_path: the assistant)")
        manifest = schema.read_manifest(self._data_uri())
        task = manifest["task"]
        if task not in ("msc", "masc"):
            raise ConfigError(f"family 'mulcot' trains on msc or masc data; {self._data_uri()} holds {task!r}")

    def _data_uri(self) -> str:
        data = self.job.data
        return self.job.resolve(data.input or data.output)

    def load_rows(self, split: str) -> list[dict[str, Any]]:
        rows = schema.read_rows(self._data_uri(), split)
        if rows:
            self.task = rows[0]["task"]
            self.labels = schema.labels_for(self.task)
        return rows

    def build_model(self) -> torch.nn.Module:
        model_cfg = self.job.model
        model, self.processor = load_model(model_cfg.path, kind=model_cfg.kind, dtype=model_cfg.dtype)
        self.encoder = PromptEncoder(self.processor)
        if self.train_cfg.role == "student":
            self._load_teacher(model)
        if model_cfg.lora.enabled:
            model = apply_lora(model, model_cfg.lora)
        if self.train_cfg.role == "student" and self.job.distill.hidden_mse:
            model = _StudentWithProjection(model, _hidden_size(model), _hidden_size(self.teacher))
        return model

    def _load_teacher(self, student: torch.nn.Module) -> None:
        distill = self.job.distill
        teacher, teacher_processor = load_model(distill.teacher_path, kind=self.job.model.kind, dtype=self.job.model.dtype)
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_encoder = PromptEncoder(teacher_processor)
        align_vocabularies(student, tokenizer_of(self.processor), tokenizer_of(teacher_processor), teacher)

    # ------------------------------------------------------------------ batches

    def _streams(self, row: dict[str, Any], encoder: PromptEncoder, image) -> tuple[Encoded | None, Encoded]:
        max_len = self.train_cfg.max_length
        chain = row.get(self.train_cfg.chain_column)
        c = encoder.encode(prompts.render("chain", row), image, chain, max_len) if chain else None
        l_target = prompts.label_target(row["label"])
        return c, encoder.encode(prompts.render("label", row), image, l_target, max_len)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        student_items: dict[str, list[Encoded]] = {"c": [], "l": []}
        teacher_items: dict[str, list[Encoded]] = {"c": [], "l": []}
        for row in rows:
            image = images.load(row)
            c, l = self._streams(row, self.encoder, image)
            if self.teacher_encoder is not None:
                tc, tl = self._streams(row, self.teacher_encoder, image)
                # Both models must score the same target tokens: cut both to the shorter one.
                for s_item, t_item, key in ((c, tc, "c"), (l, tl, "l")):
                    if s_item is None:
                        continue
                    n = min(len(s_item.input_ids) - s_item.prompt_len, len(t_item.input_ids) - t_item.prompt_len)
                    s_item.input_ids = s_item.input_ids[: s_item.prompt_len + n]
                    t_item.input_ids = t_item.input_ids[: t_item.prompt_len + n]
                    teacher_items[key].append(t_item)
            if c is not None:
                student_items["c"].append(c)
            student_items["l"].append(l)
        for key in ("c", "l"):
            if student_items[key]:
                batch[key] = self.encoder.collate(student_items[key])
                if teacher_items[key]:
                    batch[f"teacher_{key}"] = self.teacher_encoder.collate(teacher_items[key])
        return batch

    # ------------------------------------------------------------------ loss

    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        weights = {"c": self.train_cfg.w_chain, "l": self.train_cfg.w_label}
        total = None
        parts: dict[str, float] = {}
        device = next(model.parameters()).device
        if self.teacher is not None and next(self.teacher.parameters()).device != device:
            # DeepSpeed moved the student to its GPU; the frozen assistant (loaded on the
            # CPU, outside the engine) must follow, or its forward fails on mixed devices.
            self.teacher.to(device)
        for key in ("c", "l"):
            if key not in batch:
                continue
            inputs = _to(batch[key], device, model)
            labels = inputs.pop("labels")
            if self.teacher is None:
                out = model(**inputs)
                stream = losses.target_ce(out.logits, labels)
                parts[f"ce_{key}"] = float(stream.detach())
            else:
                stream = self._distill_stream(model, inputs, labels, _to(batch[f"teacher_{key}"], device, self.teacher), key, parts)
            total = weights[key] * stream if total is None else total + weights[key] * stream
        parts["loss"] = float(total.detach())
        return total, parts

    def _distill_stream(self, model, inputs, labels, teacher_inputs, key, parts) -> torch.Tensor:
        distill = self.job.distill
        want_hidden = distill.hidden_mse
        with torch.no_grad():
            t_labels = teacher_inputs.pop("labels")
            t_out = self.teacher(**teacher_inputs, output_hidden_states=want_hidden)
            t_target = losses.target_logits(t_out.logits, t_labels)
        out = model(**inputs, output_hidden_states=want_hidden)
        stream, ce, kl = losses.distill_stream_loss(out.logits, labels, t_target, distill.lambda_kd, distill.tau, distill.scale_tau2)
        parts[f"ce_{key}"], parts[f"kl_{key}"] = float(ce.detach()), float(kl.detach())
        if want_hidden:
            mask_s = losses.shift(out.logits, labels)[1] != losses.IGNORE
            mask_t = losses.shift(t_out.logits, t_labels)[1] != losses.IGNORE
            s_hidden = out.hidden_states[-1][:, :-1][mask_s]
            t_hidden = t_out.hidden_states[-1][:, :-1][mask_t]
            mse = losses.hidden_mse(s_hidden, t_hidden, _unwrap(model).projection)
            parts[f"hidden_mse_{key}"] = float(mse.detach())
            stream = stream + distill.hidden_weight * mse
        return stream

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Predict by scoring each label's l-stream answer (exact, no generation)."""
        from sentiray.models.generation import Generator

        inner = _unwrap(model)
        net = inner.student if isinstance(inner, _StudentWithProjection) else inner
        was_training = net.training
        generator = Generator(net, self.processor)
        preds: list[str] = []
        golds: list[str] = []
        for start in range(0, len(rows), 16):
            chunk = rows[start : start + 16]
            texts = [prompts.render("label", r) for r in chunk]
            imgs = [images.load(r) for r in chunk]
            scores = generator.label_logprobs(texts, imgs, self.labels)
            preds += [self.labels[int(i)] for i in scores.argmax(-1)]
            golds += [r["label"] for r in chunk]
        net.train(was_training)
        return {"correct": sum(p == g for p, g in zip(preds, golds)), "count": len(golds), "predictions": preds, "golds": golds}

    def summarize(self, combined: dict[str, Any]) -> dict[str, float]:
        from sentiray.evaluate.metrics import classification

        m = classification(combined["golds"], combined["predictions"], self.labels)
        return {"dev_accuracy": m["accuracy"], "dev_macro_f1": m["macro_f1"], "dev_weighted_f1": m["weighted_f1"]}

    # ------------------------------------------------------------------ export

    def export(self, model: torch.nn.Module, out_dir: str) -> str:
        inner = _unwrap(model)
        net = inner.student if isinstance(inner, _StudentWithProjection) else inner
        return save_model(net, self.processor, out_dir, merge_lora=self.job.model.lora.merge_on_save)


def _unwrap(model: Any) -> Any:
    """The module inside a DeepSpeed engine."""
    return getattr(model, "module", model)


def _to(batch: dict[str, torch.Tensor], device: torch.device, model: Any) -> dict[str, torch.Tensor]:
    dtype = next(_unwrap(model).parameters()).dtype
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
        student.resize_token_embeddings(t_size)
