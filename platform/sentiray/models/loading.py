"""Load Hugging Face models from a folder or an ``s3://`` prefix, add LoRA, save.

Any checkpoint that the ``Auto*`` classes can load works: the tiny models built by
:mod:`sentiray.models.tiny` on a laptop, Qwen2.5-VL on a GPU cluster. A folder holding a
PEFT adapter (``adapter_config.json``) loads as its base model with the adapter applied.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sentiray.config import LoraConfig, ModelConfig
from sentiray.data import storage
from sentiray.models.tiny import quiet_transformers

CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"

DTYPES: dict[str, Any] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",  # whatever the checkpoint's config says
}


class ModelNotFoundError(FileNotFoundError, ValueError):
    """No loadable checkpoint at the given path (missing, or no config.json inside)."""


# ----------------------------------------------------------------------------- kinds and families


@dataclass(frozen=True)
class Kind:
    """Which Auto classes load a model of this kind, and whether it has a processor."""

    model_class: str
    preprocessor_class: str


KINDS: dict[str, Kind] = {
    "vlm": Kind("AutoModelForImageTextToText", "AutoProcessor"),
    "causal_lm": Kind("AutoModelForCausalLM", "AutoTokenizer"),
    "encoder": Kind("AutoModel", "AutoTokenizer"),
}


@dataclass(frozen=True)
class ModelFamily:
    """What a model family (keyed by ``config.model_type``) needs beyond the Auto classes."""

    name: str
    # Python modules its processor imports; with the pip extra that provides them.
    requires: tuple[str, ...] = ()
    extra: str | None = None
    # Name of the submodule holding the text decoder (where LoRA goes in a VLM).
    language_model: str = "language_model"


FAMILIES: dict[str, ModelFamily] = {
    "llava": ModelFamily("LLaVA"),
    # Qwen2-VL / Qwen2.5-VL processors build a video processor that needs torchvision.
    "qwen2_vl": ModelFamily("Qwen2-VL", requires=("torchvision",), extra="gpu"),
    "qwen2_5_vl": ModelFamily("Qwen2.5-VL", requires=("torchvision",), extra="gpu"),
}
DEFAULT_FAMILY = ModelFamily("generic")


def family_of(model_type: str | None) -> ModelFamily:
    return FAMILIES.get(model_type or "", DEFAULT_FAMILY)


def _check_requirements(family: ModelFamily) -> None:
    missing = [m for m in family.requires if importlib.util.find_spec(m) is None]
    if missing:
        hint = f"pip install sentiray[{family.extra}]" if family.extra else f"pip install {' '.join(missing)}"
        raise ImportError(f"{family.name} models need {', '.join(missing)}, which is not installed: {hint}")


# ----------------------------------------------------------------------------- paths


def resolve_model_path(path_or_uri: str) -> str:
    """A local folder holding the checkpoint at ``path_or_uri`` (downloading an s3:// prefix).

    Raises :class:`ModelNotFoundError` naming the path when there is no ``config.json``
    (or ``adapter_config.json``) there.
    """
    uri = str(path_or_uri)
    if storage.is_remote(uri):
        # Check before downloading: local_copy would cache an empty folder for a wrong prefix.
        if not any(storage.exists(storage.join(uri, f)) for f in (CONFIG_FILE, ADAPTER_CONFIG_FILE)):
            raise ModelNotFoundError(f"no model at {uri}: no {CONFIG_FILE} or {ADAPTER_CONFIG_FILE} under that prefix")
        return storage.local_copy(uri)
    path = os.path.abspath(uri.removeprefix("file://"))
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"no model at {uri}: the folder does not exist")
    if not any(os.path.isfile(os.path.join(path, f)) for f in (CONFIG_FILE, ADAPTER_CONFIG_FILE)):
        raise ModelNotFoundError(f"no model at {uri}: the folder holds no {CONFIG_FILE}")
    return path


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _has_preprocessor(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, f))
        for f in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
    )


# ----------------------------------------------------------------------------- loading


def load_model(
    path_or_uri: str,
    kind: str = "vlm",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    for_generation: bool = False,
    is_trainable: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, processor_or_tokenizer)`` from a folder or an s3:// prefix.

    ``kind``: "vlm" (AutoProcessor + AutoModelForImageTextToText), "causal_lm"
    (AutoTokenizer + AutoModelForCausalLM) or "encoder" (AutoTokenizer + AutoModel).
    An adapter folder loads its base model and applies the adapter (frozen unless
    ``is_trainable``). ``for_generation`` pads on the left, as batched generation needs.
    """
    import transformers

    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(KINDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    spec = KINDS[kind]
    local = resolve_model_path(path_or_uri)

    adapter_file = os.path.join(local, ADAPTER_CONFIG_FILE)
    adapter_dir = None
    base_uri = path_or_uri
    if os.path.isfile(adapter_file) and not os.path.isfile(os.path.join(local, CONFIG_FILE)):
        adapter_dir = local
        base_uri = _read_json(adapter_file).get("base_model_name_or_path")
        if not base_uri:
            raise ModelNotFoundError(f"adapter at {path_or_uri} does not name its base model")
        try:
            local = resolve_model_path(base_uri)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"adapter at {path_or_uri} names base model {base_uri}, which fails to load: {exc}"
            ) from exc

    family = family_of(_read_json(os.path.join(local, CONFIG_FILE)).get("model_type"))
    if kind == "vlm":
        _check_requirements(family)

    # The adapter folder carries the processor saved with it (possibly changed in
    # training, e.g. padding side); fall back to the base model's.
    pre_dir = adapter_dir if adapter_dir and _has_preprocessor(adapter_dir) else local
    pre_cls = getattr(transformers, spec.preprocessor_class)
    model_cls = getattr(transformers, spec.model_class)
    with quiet_transformers():
        processor = pre_cls.from_pretrained(pre_dir, trust_remote_code=trust_remote_code)
        model = model_cls.from_pretrained(local, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    # Record where the base came from (an s3:// URI, not its local cache), so that an
    # adapter saved from this model names a base that loads on any machine.
    model.name_or_path = _portable(base_uri)

    if adapter_dir is not None:
        from peft import PeftModel

        with _quiet_peft():
            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)

    if for_generation:
        prepare_for_generation(model, processor)
    return model, processor


def load_processor(path_or_uri: str, kind: str = "vlm", trust_remote_code: bool = False) -> Any:
    """The processor (or tokenizer) of a checkpoint, without its weights."""
    import transformers

    local = resolve_model_path(path_or_uri)
    adapter_file = os.path.join(local, ADAPTER_CONFIG_FILE)
    if not _has_preprocessor(local) and os.path.isfile(adapter_file):
        local = resolve_model_path(_read_json(adapter_file)["base_model_name_or_path"])
    with quiet_transformers():
        return getattr(transformers, KINDS[kind].preprocessor_class).from_pretrained(
            local, trust_remote_code=trust_remote_code
        )


def load_model_from_config(cfg: ModelConfig, **kw: Any) -> tuple[Any, Any]:
    """:func:`load_model` with the path, kind, dtype and trust_remote_code of a ``ModelConfig``."""
    args = {"kind": cfg.kind, "dtype": cfg.dtype, "trust_remote_code": cfg.trust_remote_code, **kw}
    return load_model(cfg.path, **args)


def _portable(uri: str) -> str:
    uri = str(uri)
    return uri if storage.is_remote(uri) else os.path.abspath(uri.removeprefix("file://"))


def tokenizer_of(processor_or_tokenizer: Any) -> Any:
    """The tokenizer inside a processor (or the tokenizer itself)."""
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def prepare_for_generation(model: Any, processor_or_tokenizer: Any) -> None:
    """Left padding (new tokens follow the prompt directly) and a pad token everywhere."""
    tok = tokenizer_of(processor_or_tokenizer)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id


# ----------------------------------------------------------------------------- LoRA


def lora_target_modules(model: Any, names: list[str], language_model_only: bool = True) -> list[str] | str:
    """PEFT ``target_modules`` for ``names``: in a VLM, only those in the text decoder.

    Why: the CLIP tower (and Qwen2.5-VL's vision blocks) use the same module names
    (q_proj, k_proj, v_proj, ... gate_proj) as the decoder. The papers adapt the language
    model; adapting the vision tower as well costs memory and changes image features the
    decoder was aligned to. A regex on the module's full name restricts the match.
    """
    family = family_of(getattr(getattr(model, "config", None), "model_type", None))
    prefix = f".{family.language_model}."
    has_text_submodule = any(prefix in f".{n}." for n, _ in model.named_modules())
    if not language_model_only or not has_text_submodule:
        return list(names)
    alternatives = "|".join(re.escape(n) for n in names)
    return rf"(?:.*\.)?{re.escape(family.language_model)}\..*\.(?:{alternatives})"


def apply_lora(model: Any, lora: LoraConfig, language_model_only: bool = True) -> Any:
    """Wrap ``model`` in a PEFT LoRA model: only the adapter weights stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_modules(model, lora.target_modules, language_model_only),
        bias="none",
    )
    with _quiet_peft():
        return get_peft_model(model, peft_config)


@contextmanager
def _quiet_peft():
    """PEFT 0.21 calls a transformers 5.x method deprecated in favour of a renamed one;
    the FutureWarning is theirs to fix and says nothing to our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def save_model(model: Any, processor: Any, out_dir: str, merge_lora: bool = True) -> str:
    """Write ``model`` and its processor/tokenizer in HF format to ``out_dir`` (local or s3://).

    A PEFT model is saved merged (a plain full checkpoint; ``merge_lora=True``) or as the
    adapter alone, whose ``adapter_config.json`` names the base; :func:`load_model` loads
    both. The caller's model is left untouched (merging works on a copy).
    """
    from peft import PeftModel

    remote = storage.is_remote(out_dir)
    # S3 has no local folder to write into: write to a temporary one, then upload.
    local_dir = tempfile.mkdtemp(prefix="sentiray-save-") if remote else os.path.abspath(out_dir)
    os.makedirs(local_dir, exist_ok=True)
    try:
        with quiet_transformers():
            if not isinstance(model, PeftModel):
                model.save_pretrained(local_dir)
            elif merge_lora:
                # On a copy, so that training can go on with the adapter after a mid-run save.
                copy.deepcopy(model).merge_and_unload().save_pretrained(local_dir)
            else:
                # We never resize the vocabulary, so the full embedding matrices need not
                # travel with the adapter (PEFT would otherwise look up the base's config to decide).
                model.save_pretrained(local_dir, save_embedding_layers=False)
            if processor is not None:
                processor.save_pretrained(local_dir)
        if remote:
            storage.upload_dir(local_dir, out_dir)
    finally:
        if remote:
            shutil.rmtree(local_dir, ignore_errors=True)
    return out_dir if remote else local_dir


# ----------------------------------------------------------------------------- sizes


def count_parameters(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once.

    Under DeepSpeed ZeRO-3 a parameter holds only its shard: ``ds_numel`` is its full size.
    """
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
