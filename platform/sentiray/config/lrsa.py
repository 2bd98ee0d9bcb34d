"""``lrsa:``: LRSA, LLM rationales injected into a small aspect-based model (method.md, section 2).

The text encoder is ``model.path`` (``model.kind: encoder``: any Hugging Face encoder that
``AutoModel`` loads: BERT, RoBERTa, DeBERTa, or BART, whose encoder is used). What this
section adds: where the image comes from, which rationales are read, how they are fused,
and the ablation switches of the paper's table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sentiray.config.base import Section


class LrsaConfig(Section):
    # ------------------------------------------------------------------ inputs
    image: Literal["vision_model", "regions", "none"] = Field(
        "vision_model",
        description="Image input: a CLIP-style vision model (lrsa.vision_model), precomputed region "
        "features from a column (lrsa.region_column, e.g. VLP-MABSA's 36 x 2048), or none.",
    )
    vision_model: str | None = Field(
        None,
        description="CLIP-style vision model folder (or s3://) loaded with AutoModel / CLIPVisionModel and "
        "AutoImageProcessor; required with image: vision_model.",
    )
    region_column: str = Field(
        "image_regions", description="Column of region features (N x region_dim numbers per row)."
    )
    region_dim: int = Field(2048, gt=0, description="Width of a region feature (Faster R-CNN: 2048).")
    rationale_encoder: str | None = Field(
        None, description="A second HF encoder for the rationales (folder or s3://); default: the text encoder itself."
    )
    text_rationale_column: str = Field(
        "text_explanation", description="Column of the text explanation L_t (teacher stage)."
    )
    image_rationale_column: str = Field(
        "image_description", description="Column of the image description L_i (teacher stage)."
    )
    max_length: int = Field(
        128, gt=8, description="Tokens of the post (plus the aspect for MASC); longer rows are skipped, counted."
    )
    rationale_max_length: int = Field(96, gt=4, description="Tokens kept of each rationale (longer ones are cut).")
    # ------------------------------------------------------------------ the fusion and its ablations
    rationales: Literal["both", "text", "image", "none"] = Field(
        "both", description="Which rationales the model reads (ablation: text only, image only, none)."
    )
    attention: Literal["dual", "one_way", "concat"] = Field(
        "dual",
        description="dual: multimodal states attend to the rationales and the rationales to them; one_way: only "
        "the first; concat: no cross-attention, the pooled rationales concatenated to every state.",
    )
    fusion: Literal["residual", "gate"] = Field(
        "residual", description="How the two directions are combined: residual + layer norm, or a learned sigmoid gate."
    )
    cross_layers: int = Field(1, ge=1, le=12, description="Cross-attention layers.")
    cross_heads: int = Field(4, ge=1, description="Heads per cross-attention (must divide the encoder's hidden size).")
    ffn_mult: int = Field(2, ge=1, description="Feed-forward width of a cross layer, as a multiple of the hidden size.")
    dropout: float = Field(0.1, ge=0, lt=1)
    rationale_dropout: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Training only: each rationale of a sample is hidden with this probability, so the "
        "model also answers without them (at serving time a request may bring none).",
    )
    freeze_vision: bool = Field(
        False, description="Keep the vision model's weights fixed (only its projection trains)."
    )
    # ------------------------------------------------------------------ evaluation
    evaluate_without_rationales: bool = Field(
        True,
        description="evaluate: also score the model with every rationale withheld (what an endpoint without a "
        "teacher gets), reported as norat_*.",
    )

    @property
    def reads_text_rationale(self) -> bool:
        return self.rationales in ("both", "text")

    @property
    def reads_image_rationale(self) -> bool:
        return self.rationales in ("both", "image")
