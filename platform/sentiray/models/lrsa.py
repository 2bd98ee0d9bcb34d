"""LRSA's network (method.md, section 2): a small encoder reads the post, the picture and the
teacher's two rationales, fused by dual cross-attention.

::

    words ─┐                                   text explanation L_t ─┐
           ├─ [image tokens ; word tokens] ─ HF encoder ─ M          ├─ encoder ─ R = [null ; L_t ; L_i]
    image ─┘  (CLIP-style vision model or region                     │
               features, projected; VLP-MABSA style)  image description L_i ─┘
    per cross layer:   A = MHA(q=M, kv=R)   B = MHA(q=R, kv=M)
                       M <- LN(M + A), FFN      R <- LN(R + B), FFN
    fusion:            r = mean(R);  H = LN(M + W r)  (residual)  or  g = sigmoid(W_g [M ; W r]),
                       H = LN(g M + (1 - g) W r)  (gate)
    heads:             JMASA / MATE: a BIO-with-polarity tag per word (first sub-token)
                       MASC: [H_cls ; mean of H over the aspect's mention] -> 3 labels

Ablation switches (``lrsa.rationales``, ``lrsa.attention``): ``none`` builds no rationale path
at all (H = M); ``text`` / ``image`` read one rationale; ``one_way`` keeps only A (no B, no
fusion: H = M after the layers); ``concat`` has no cross-attention: H = LN(M + W [M ; mean(R)]).

Training hides each rationale of a sample with probability ``rationale_dropout`` (in train
mode only), and a learned null rationale token is always there to attend to, so the model
answers with both, one or no rationales.

:class:`LrsaInputs` turns canonical rows into model inputs (tokenization, word alignment,
BIO tags, images); :func:`save` / :func:`load` write and read an exported folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sentiray.data.images import ImageError
from sentiray.data.schema import SENTIMENT_LABELS, DataError
from sentiray.evaluate import spans as span_tags

ARCH_FILE = "lrsa.json"
LAYERS_FILE = "lrsa_layers.safetensors"
IGNORE = -100
ENCODER_PREFIXES = ("text_encoder.", "rationale_encoder.", "vision.")


@dataclass
class LrsaArch:
    """What rebuilds the network (``lrsa.json`` in an exported folder)."""

    task: str  # mabsa (tags) or masc (classification)
    image: str = "vision_model"  # vision_model | regions | none
    region_dim: int = 2048
    rationales: str = "both"  # both | text | image | none
    attention: str = "dual"  # dual | one_way | concat
    fusion: str = "residual"  # residual | gate
    cross_layers: int = 1
    cross_heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1
    rationale_dropout: float = 0.3
    max_length: int = 128
    rationale_max_length: int = 96
    separate_rationale_encoder: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        """The rationales read, in memory order."""
        return {"both": ("text", "image"), "text": ("text",), "image": ("image",), "none": ()}[self.rationales]

    @classmethod
    def from_settings(cls, task: str, s: Any) -> LrsaArch:
        names = {f.name for f in dataclasses.fields(cls)} - {"task", "separate_rationale_encoder"}
        return cls(task=task, separate_rationale_encoder=bool(s.rationale_encoder), **{n: getattr(s, n) for n in names})


def hidden_size(config: Any) -> int:
    return int(getattr(config, "hidden_size", None) or config.d_model)


def encoder_body(model: nn.Module) -> nn.Module:
    """The module that encodes: the encoder of an encoder-decoder (BART), else the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_encoder() if getattr(base.config, "is_encoder_decoder", False) else model


# --------------------------------------------------------------------------- layers


class Attention(nn.Module):
    """Multi-head attention that returns its weights (averaged over heads).

    Its own rather than ``nn.MultiheadAttention``, whose forward reads ``out_proj.weight``
    without calling ``out_proj``: DeepSpeed ZeRO-3 gathers a module's parameters when the module
    is called, so that weight would still be a partition there."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, query, memory, memory_mask):
        """``memory_mask``: True where the memory may be attended to (at least one per row)."""
        n, lq, _ = query.shape

        def split(x):
            return x.view(n, -1, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(memory)), split(self.v(memory))
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5
        scores = scores.masked_fill(~memory_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, -1)
        out = (self.drop(weights) @ v).transpose(1, 2).reshape(n, lq, -1)
        return self.o(out), weights.mean(1)


class CrossLayer(nn.Module):
    """One cross-attention layer: M attends to R (and, two-way, R attends to M), each with a
    residual, layer norm and feed-forward, as a transformer decoder's cross-attention block."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, two_way: bool):
        super().__init__()
        self.attn_mr = Attention(d, heads, dropout)
        self.norm_m1, self.norm_m2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn_m = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.two_way = two_way
        if two_way:
            self.attn_rm = Attention(d, heads, dropout)
            self.norm_r1, self.norm_r2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ffn_r = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, m, m_mask, r, r_mask):
        # Both directions read the layer's inputs.
        a, w_mr = self.attn_mr(m, r, r_mask)
        w_rm = None
        if self.two_way:
            b, w_rm = self.attn_rm(r, m, m_mask)
            r = self.norm_r1(r + self.drop(b))
            r = self.norm_r2(r + self.drop(self.ffn_r(r)))
        m = self.norm_m1(m + self.drop(a))
        m = self.norm_m2(m + self.drop(self.ffn_m(m)))
        return m, r, (w_mr, w_rm)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class LrsaModel(nn.Module):
    """The network; ``forward(**batch)`` -> ``{"logits", "attentions"}``."""

    def __init__(
        self,
        arch: LrsaArch,
        text_encoder: nn.Module,
        vision: nn.Module | None = None,
        rationale_encoder: nn.Module | None = None,
    ):
        super().__init__()
        self.arch = arch
        d = hidden_size(text_encoder.config)
        if d % arch.cross_heads:
            raise DataError(f"lrsa.cross_heads: {arch.cross_heads} does not divide the encoder's hidden size {d}")
        self.text_encoder = text_encoder
        self.rationale_encoder = rationale_encoder  # None: the text encoder reads the rationales too
        self.vision = vision
        if arch.image == "vision_model":
            self.image_proj = nn.Linear(hidden_size(vision.config), d)
        elif arch.image == "regions":
            self.image_proj = nn.Linear(arch.region_dim, d)
        if arch.kinds:
            r_dim = hidden_size((rationale_encoder or text_encoder).config)
            self.rationale_proj = nn.Linear(r_dim, d) if r_dim != d else nn.Identity()
            self.rationale_type = nn.Embedding(len(arch.kinds), d)  # which rationale a state belongs to
            self.null_rationale = nn.Parameter(torch.zeros(1, 1, d))
            self._build_fusion(d)
        self.drop = nn.Dropout(arch.dropout)
        if arch.task == "mabsa":
            self.tagger = nn.Linear(d, len(span_tags.TAGS))
        else:
            self.classifier = nn.Linear(2 * d, len(SENTIMENT_LABELS))

    def _build_fusion(self, d: int) -> None:
        arch = self.arch
        if arch.attention == "concat":
            self.concat_proj = nn.Linear(2 * d, d)
            self.concat_norm = nn.LayerNorm(d)
            return
        two_way = arch.attention == "dual"
        self.cross = nn.ModuleList(
            CrossLayer(d, arch.cross_heads, arch.ffn_mult * d, arch.dropout, two_way) for _ in range(arch.cross_layers)
        )
        if two_way:
            self.summary_proj = nn.Linear(d, d)
            self.fusion_norm = nn.LayerNorm(d)
            if arch.fusion == "gate":
                self.gate = nn.Linear(2 * d, d)

    # ------------------------------------------------------------------ encoders

    def _image_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.arch.image == "vision_model":
            states = self.vision(pixel_values=batch["pixel_values"]).last_hidden_state
            mask = batch["has_image"].unsqueeze(1).expand(-1, states.shape[1])
        elif self.arch.image == "regions":
            states, mask = batch["regions"], batch["region_mask"]
        else:
            return None, None
        return self.image_proj(states), mask.bool()

    def _multimodal(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """M over [image tokens ; word tokens], its mask, and how many image tokens lead it."""
        words = self.text_encoder.get_input_embeddings()(batch["input_ids"])
        mask = batch["attention_mask"].bool()
        image, image_mask = self._image_tokens(batch)
        kwargs: dict[str, torch.Tensor] = {}
        n_image = 0
        if image is not None:
            n_image = image.shape[1]
            words = torch.cat([image.to(words.dtype), words], 1)
            mask = torch.cat([image_mask, mask], 1)
        if "token_type_ids" in batch:
            types = batch["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], n_image), types], 1)
        out = encoder_body(self.text_encoder)(inputs_embeds=words, attention_mask=mask.long(), **kwargs)
        return out.last_hidden_state, mask, n_image

    def _rationales(self, batch: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R = [null ; L_t ; L_i] and its mask; hidden rationales (absent, or dropped) masked out."""
        encoder = self.rationale_encoder or self.text_encoder
        ids, mask = batch["rationale_ids"], batch["rationale_mask"]  # (kinds * n, L), kind-major
        states = self.rationale_proj(encoder_body(encoder)(input_ids=ids, attention_mask=mask).last_hidden_state)
        length = states.shape[1]
        present = batch["rationale_present"].bool()  # (n, kinds)
        if self.training and self.arch.rationale_dropout > 0:
            keep = torch.rand(present.shape, device=present.device) >= self.arch.rationale_dropout
            present = present & keep
        parts, masks = [self.null_rationale.expand(n, 1, -1)], [present.new_ones(n, 1)]
        kinds = self.rationale_type(torch.arange(len(self.arch.kinds), device=ids.device))  # called: ZeRO-3 gathers it
        for k in range(len(self.arch.kinds)):
            part = states[k * n : (k + 1) * n] + kinds[k]
            parts.append(part)
            masks.append(mask[k * n : (k + 1) * n].bool() & present[:, k : k + 1].expand(-1, length))
        return torch.cat(parts, 1), torch.cat(masks, 1)

    # ------------------------------------------------------------------ fusion and heads

    def _fuse(self, m, m_mask, r, r_mask, attentions: list) -> torch.Tensor:
        arch = self.arch
        if arch.attention == "concat":
            pooled = masked_mean(r, r_mask).unsqueeze(1).expand_as(m)
            return self.concat_norm(m + self.concat_proj(torch.cat([m, pooled], -1)))
        for layer in self.cross:
            m, r, weights = layer(m, m_mask, r, r_mask)
            attentions.append(weights)
        if arch.attention == "one_way":
            return m
        summary = self.summary_proj(masked_mean(r, r_mask)).unsqueeze(1).expand_as(m)
        if arch.fusion == "gate":
            g = torch.sigmoid(self.gate(torch.cat([m, summary], -1)))
            return self.fusion_norm(g * m + (1 - g) * summary)
        return self.fusion_norm(m + summary)

    def forward(self, **batch: torch.Tensor) -> dict[str, Any]:
        m, m_mask, n_image = self._multimodal(batch)
        attentions: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        h = m
        if self.arch.kinds:
            r, r_mask = self._rationales(batch, m.shape[0])
            h = self._fuse(m, m_mask, r, r_mask, attentions)
        text = self.drop(h[:, n_image:])
        if self.arch.task == "mabsa":
            logits = self.tagger(text)
        else:
            aspect = batch["aspect_mask"].bool()
            pooled = torch.where(aspect.any(1, keepdim=True), masked_mean(text, aspect), text[:, 0])
            logits = self.classifier(torch.cat([text[:, 0], pooled], -1))
        return {"logits": logits, "attentions": attentions}

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The pretrained parts (text, rationale and vision encoders): the lower-lr group."""
        modules = [self.text_encoder, self.rationale_encoder, self.vision]
        return [p for mod in modules if mod is not None for p in mod.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- inputs


def find_words(words: list[str], target: list[str]) -> int | None:
    """Where ``target`` first occurs in ``words`` as whole words (case-insensitive), or None."""
    low, tgt = [w.lower() for w in words], [w.lower() for w in target]
    for i in range(len(low) - len(tgt) + 1):
        if tgt and low[i : i + len(tgt)] == tgt:
            return i
    return None


def row_words(row: dict[str, Any]) -> list[str]:
    return list(row.get("words") or (row.get("text") or "").split())


class LrsaInputs:
    """Canonical rows -> tensors: the post's word tokens (with the aspect for MASC), the
    rationales, the image. ``encode(row, train=True)`` returns ``{"skip": reason}`` for a row
    that cannot train; at prediction time long posts are cut (words beyond get no tag)."""

    def __init__(
        self,
        arch: LrsaArch,
        tokenizer: Any,
        rationale_tokenizer: Any | None = None,
        image_processor: Any | None = None,
        text_column: str = "text_explanation",
        image_column: str = "image_description",
        region_column: str = "image_regions",
    ):
        self.arch, self.tokenizer = arch, tokenizer
        self.rationale_tokenizer = rationale_tokenizer or tokenizer
        self.image_processor = image_processor
        self.columns = {"text": text_column, "image": image_column}
        self.region_column = region_column
        self._blank: torch.Tensor | None = None

    # ------------------------------------------------------------------ one row

    def encode(self, row: dict[str, Any], train: bool = False) -> dict[str, Any]:
        words = row_words(row)
        if not words:
            return {"skip": "empty text: no words to tag or classify", "id": row.get("id")}
        try:
            out = self._text(row, words, train)
            if "skip" not in out:
                out.update(self._rationale_inputs(row))
                out.update(self._image(row))
        except (DataError, ImageError) as exc:  # set aside with the reason, never a crash
            return {"skip": str(exc), "id": row.get("id")}
        return out

    def _text(self, row: dict[str, Any], words: list[str], train: bool) -> dict[str, Any]:
        arch, tok = self.arch, self.tokenizer
        aspect = (row.get("aspect") or "").split() if arch.task == "masc" else None
        if arch.task == "masc" and not aspect:
            raise DataError("no aspect: a MASC row needs the aspect to classify")
        enc = tok(words, aspect, is_split_into_words=True, truncation=False)
        if len(enc["input_ids"]) > arch.max_length:
            if train:
                return {
                    "skip": f"the post needs {len(enc['input_ids'])} tokens, over lrsa.max_length={arch.max_length}",
                    "id": row.get("id"),
                }
            enc = tok(
                words,
                aspect,
                is_split_into_words=True,
                truncation="only_first" if aspect else True,
                max_length=arch.max_length,
            )
        word_ids = enc.word_ids()
        seq_ids = enc.sequence_ids()
        first = {}  # word index -> its first token (only the post's words, sequence 0)
        for i, (w, s) in enumerate(zip(word_ids, seq_ids)):
            if w is not None and s == 0 and w not in first:
                first[w] = i
        out: dict[str, Any] = {
            "id": row.get("id"),
            "input_ids": enc["input_ids"],
            "n_words": len(words),
            "first_token": [first.get(w, -1) for w in range(len(words))],
        }
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        if arch.task == "mabsa":
            if row.get("spans") is not None:
                gold = [(s["start"], s["end"], s["polarity"]) for s in row["spans"]]
                tags = span_tags.to_bio(gold, len(words))
                labels = [IGNORE] * len(enc["input_ids"])
                for w, i in first.items():
                    labels[i] = span_tags.TAGS.index(tags[w])
                if train and any(s[0] not in first or s[1] - 1 not in first for s in gold):
                    return {"skip": "a gold span lies beyond lrsa.max_length", "id": row.get("id")}
                out["labels"] = labels
        else:
            start = find_words(words, aspect)
            mention = set(range(start, start + len(aspect))) if start is not None else set()
            # The aspect's mention in the post; if the post does not contain it, the aspect segment.
            out["aspect_mask"] = [
                int((s == 0 and w in mention) or (not mention and s == 1)) for w, s in zip(word_ids, seq_ids)
            ]
            if row.get("label") is not None:
                if row["label"] not in SENTIMENT_LABELS:
                    raise DataError(f"unknown label {row['label']!r}")
                out["label"] = SENTIMENT_LABELS.index(row["label"])
        return out

    def _rationale_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        ids, present = [], []
        for kind in self.arch.kinds:
            text = row.get(self.columns[kind])
            text = text.strip() if isinstance(text, str) else ""
            enc = self.rationale_tokenizer(text, truncation=True, max_length=self.arch.rationale_max_length)
            ids.append(enc["input_ids"])
            present.append(int(bool(text)))
        return {"rationale_ids": ids, "rationale_present": present}

    def _image(self, row: dict[str, Any]) -> dict[str, Any]:
        from sentiray.data import images

        if self.arch.image == "vision_model":
            image = images.load(row)
            if image is None:
                return {"pixel_values": self.blank(), "has_image": 0}
            return {
                "pixel_values": self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0],
                "has_image": 1,
            }
        if self.arch.image == "regions":
            value = row.get(self.region_column)
            regions = (
                torch.tensor(value, dtype=torch.float32) if value is not None else torch.zeros(0, self.arch.region_dim)
            )
            if regions.ndim != 2 or regions.shape[1] != self.arch.region_dim:
                raise DataError(
                    f"{self.region_column}: region features must be N x {self.arch.region_dim}, "
                    f"got shape {tuple(regions.shape)}"
                )
            return {"regions": regions}
        return {}

    def blank(self) -> torch.Tensor:
        """Pixels of a missing image (masked out in the model)."""
        if self._blank is None:
            from PIL import Image

            px = self.image_processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"][0]
            self._blank = torch.zeros_like(px)
        return self._blank

    # ------------------------------------------------------------------ a batch

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id or 0
        batch = {
            "input_ids": _pad([e["input_ids"] for e in examples], pad),
            "attention_mask": _pad([[1] * len(e["input_ids"]) for e in examples], 0),
        }
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = _pad([e["token_type_ids"] for e in examples], 0)
        if self.arch.task == "mabsa":
            if all("labels" in e for e in examples):
                batch["labels"] = _pad([e["labels"] for e in examples], IGNORE)
        else:
            batch["aspect_mask"] = _pad([e["aspect_mask"] for e in examples], 0)
            if all("label" in e for e in examples):
                batch["label"] = torch.tensor([e["label"] for e in examples])
        if self.arch.kinds:
            rpad = self.rationale_tokenizer.pad_token_id or 0
            seqs = [e["rationale_ids"][k] for k in range(len(self.arch.kinds)) for e in examples]  # kind-major
            batch["rationale_ids"] = _pad(seqs, rpad)
            batch["rationale_mask"] = _pad([[1] * len(s) for s in seqs], 0)
            batch["rationale_present"] = torch.tensor([e["rationale_present"] for e in examples])
        if self.arch.image == "vision_model":
            batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
            batch["has_image"] = torch.tensor([e["has_image"] for e in examples])
        elif self.arch.image == "regions":
            n = max(1, max(e["regions"].shape[0] for e in examples))
            batch["regions"] = torch.zeros(len(examples), n, self.arch.region_dim)
            batch["region_mask"] = torch.zeros(len(examples), n, dtype=torch.long)
            for i, e in enumerate(examples):
                batch["regions"][i, : e["regions"].shape[0]] = e["regions"]
                batch["region_mask"][i, : e["regions"].shape[0]] = 1
        return batch


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


# --------------------------------------------------------------------------- building, saving, loading


def load_vision(path: str) -> tuple[nn.Module, Any]:
    """A CLIP-style vision model (``AutoModel``) and its ``AutoImageProcessor``."""
    from transformers import AutoImageProcessor, AutoModel

    from sentiray.models.loading import resolve_model_path
    from sentiray.models.tiny import quiet_transformers

    local = resolve_model_path(path)
    with quiet_transformers():
        model = AutoModel.from_pretrained(local)
        processor = AutoImageProcessor.from_pretrained(local)
    if hasattr(model, "vision_model") and not hasattr(model.config, "image_size"):
        model = model.vision_model  # a full CLIP folder: keep its vision tower
    return model, processor


def load_encoder(path: str, dtype: str = "float32") -> tuple[nn.Module, Any]:
    """A Hugging Face encoder (``AutoModel``) and tokenizer; an encoder-decoder's decoder is frozen
    (unused: only its encoder reads)."""
    from sentiray.models.loading import load_model

    model, tokenizer = load_model(path, kind="encoder", dtype=dtype)
    if getattr(model.config, "is_encoder_decoder", False):
        for name, p in model.named_parameters():
            if not name.startswith(("encoder.", "shared.")):
                p.requires_grad_(False)
    return model, tokenizer


def save(model: LrsaModel, inputs: LrsaInputs, out_dir: str, merge_lora: bool = True) -> None:
    """An exported folder: each HF part in its own subfolder, the new layers and the arch beside."""
    from safetensors.torch import save_file

    from sentiray.models.loading import save_model

    save_model(model.text_encoder, inputs.tokenizer, os.path.join(out_dir, "encoder"), merge_lora=merge_lora)
    if model.rationale_encoder is not None:
        save_model(
            model.rationale_encoder,
            inputs.rationale_tokenizer,
            os.path.join(out_dir, "rationale_encoder"),
            merge_lora=merge_lora,
        )
    if model.vision is not None:
        model.vision.save_pretrained(os.path.join(out_dir, "vision"))
        inputs.image_processor.save_pretrained(os.path.join(out_dir, "vision"))
    layers = {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(ENCODER_PREFIXES)
    }
    save_file(layers, os.path.join(out_dir, LAYERS_FILE))
    with open(os.path.join(out_dir, ARCH_FILE), "w") as f:
        json.dump(
            {"arch": dataclasses.asdict(model.arch), "columns": inputs.columns, "region_column": inputs.region_column},
            f,
            indent=2,
            sort_keys=True,
        )


def load(folder: str, device: str | None = None) -> tuple[LrsaModel, LrsaInputs]:
    """The network and its inputs of an exported folder, in eval mode."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, ARCH_FILE)) as f:
        saved = json.load(f)
    arch = LrsaArch(**saved["arch"])
    encoder, tokenizer = load_encoder(os.path.join(folder, "encoder"))
    rationale_encoder = rationale_tokenizer = None
    if arch.separate_rationale_encoder:
        rationale_encoder, rationale_tokenizer = load_encoder(os.path.join(folder, "rationale_encoder"))
    vision = processor = None
    if arch.image == "vision_model":
        vision, processor = load_vision(os.path.join(folder, "vision"))
    model = LrsaModel(arch, encoder, vision, rationale_encoder)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(folder, LAYERS_FILE)), strict=False)
    missing = [k for k in missing if not k.startswith(ENCODER_PREFIXES)]
    if missing or unexpected:
        raise DataError(
            f"{folder}: the saved LRSA layers do not match {ARCH_FILE} (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    if device:
        model.to(device)
    inputs = LrsaInputs(
        arch,
        tokenizer,
        rationale_tokenizer,
        processor,
        saved["columns"]["text"],
        saved["columns"]["image"],
        saved.get("region_column", "image_regions"),
    )
    return model.eval(), inputs
