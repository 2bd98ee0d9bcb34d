"""The MSE-Adapter demo's and tests' stand-in for a pretrained LLM: the tiny Qwen2, briefly fitted
on text-only sentiment.

Why not the tiny random model itself: a frozen random network cannot be steered. Its logits are
near uniform (std 0.16 over 1878 tokens) and the gradient reaching the adapter is ~1e-7; an
adapter trained on it stays at the uniform loss (ln |V| = 7.5) for ever, whatever the lr or eps.
The method relies on what a real LLM brings: it knows what sentiment words mean, it answers a
task prompt with a number or an index, and it reads whatever sits in the ``<Multimodal>`` span.

``fit_demo_backbone`` teaches the tiny model exactly that, in a few hundred plain-PyTorch steps:
the MSE-Adapter sequence layout (the family's own :class:`~sentiray.families.mse_adapter.RowEncoder`,
so prompts and positions are the ones training will use) with the text of an *independent*
synthetic corpus (its own seed; never the rows the adapter then trains, validates or tests on)
and the answer (``+1.2`` or a class index). In ``slot_share`` of the rows the text is made
neutral and the sentiment word sits at the pseudo-token positions instead, so that the model
learns to read those positions too. It never sees audio or video: whatever the adapter then adds
beyond the text (on the rows whose words are flat) is the adapter's.

The result is an ordinary Hugging Face folder (AutoModelForCausalLM). The fit is cached: a folder
whose marker matches the arguments and the base weights is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable

import numpy as np
import torch

MARKER = ".sentiray-demo-backbone.json"
RECIPE_VERSION = 2  # 2: the fit computes the answer-position logits only
DESCRIPTION = (
    "MSE-Adapter demo backbone: the tiny Qwen2 fitted on text-only sentiment of an independent synthetic "
    "corpus (a stand-in for a pretrained LLM such as Qwen-1.8B or ChatGLM3-6B)"
)


def _signature(base: str, **args) -> dict:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(base)):
        if name.endswith(".safetensors"):
            with open(os.path.join(base, name), "rb") as f:
                digest.update(f.read())
    return {"recipe": RECIPE_VERSION, "base_weights": digest.hexdigest()[:16], **args}


def _examples(task: str, size: int, seed: int, slot_share: float, encoder, rng: np.random.Generator) -> list:
    """(ids, mask, answer) of the corpus rows whose text carries their label."""
    from sentiray.data import synthetic

    rows = [r for split in synthetic.generate(task, size, seed=seed).splits.values() for r in split]
    out = []
    for row in rows:
        meta = json.loads(row["meta"])
        if meta.get("flat_text"):
            continue  # its words do not say the label: nothing for a text model to learn
        cue = _cue_word(task, row, rng)
        text = row["text"]
        if cue is not None and rng.random() < slot_share:
            text = _neutral_text(task, rng)
        example = encoder.encode({**row, "text": text}, with_answer=True)
        if cue is not None and text != row["text"]:
            ids = encoder.ids(" " + cue)
            start, n = encoder.layout.pseudo_start, encoder.layout.pseudo_tokens
            example["ids"][start : start + n] = (ids * n)[:n]  # the word where the pseudo tokens go
        out.append((example["ids"], example["mask"], example["answer"], text != row["text"]))
    return out


def _cue_word(task: str, row: dict, rng: np.random.Generator) -> str | None:
    from sentiray.data import synthetic

    if task == "msa":
        if row["score"] == 0:
            return None
        words = synthetic.MSA_INTENSITY_WORDS[row["label"]][synthetic._msa_tier(row["score"])]
    else:
        words = synthetic.EMOTION_WORDS[row["label"]]
    return words[int(rng.integers(len(words)))] if words else None


def _neutral_text(task: str, rng: np.random.Generator) -> str:
    from sentiray.data import synthetic

    if task == "msa":
        template = synthetic.MSA_NEUTRAL_TEMPLATES[int(rng.integers(len(synthetic.MSA_NEUTRAL_TEMPLATES)))]
        return template.format(subject=synthetic.MSA_SUBJECTS[int(rng.integers(len(synthetic.MSA_SUBJECTS)))])
    template = synthetic.NEUTRAL_UTTERANCES[int(rng.integers(len(synthetic.NEUTRAL_UTTERANCES)))]
    return template.format(obj="coffee", place="office", time="tonight")


def _batch(items: list, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) + len(answer) for ids, _, answer, _ in items)
    ids_t = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask_t = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, (ids, mask, answer, _) in enumerate(items):
        full = ids + answer
        ids_t[i, : len(full)] = torch.tensor(full)
        mask_t[i, : len(full)] = torch.tensor(mask + [1] * len(answer))
        labels[i, len(ids) : len(full)] = torch.tensor(answer)
    slots = torch.tensor([slot for *_, slot in items], dtype=torch.bool)
    return {"input_ids": ids_t, "attention_mask": mask_t, "labels": labels, "slots": slots}


def _embeds(model, batch: dict[str, torch.Tensor], start: int, n: int, noise: float, gen) -> torch.Tensor:
    """Input embeddings; the words at the pseudo-token positions blurred by Gaussian noise (std
    ``noise`` x the embeddings' own), so the model reads a neighbourhood of each word there,
    not only its exact vector: what the adapter writes is never exactly a word."""
    emb = model.get_input_embeddings()(batch["input_ids"])
    if noise:
        scale = noise * float(model.get_input_embeddings().weight.detach().std())
        blur = torch.randn(emb[:, start : start + n].shape, generator=gen) * scale
        emb = torch.cat(
            [emb[:, :start], emb[:, start : start + n] + blur * batch["slots"][:, None, None], emb[:, start + n :]], 1
        )
    return emb


def fit_demo_backbone(
    base: str,
    out_dir: str,
    tasks: tuple[str, ...] = ("msa", "erc"),
    steps: int = 800,
    corpus_size: int = 3000,
    seed: int = 99,
    slot_share: float = 0.5,
    slot_noise: float = 0.5,
    batch_size: int = 32,
    lr: float = 3e-3,
    log_every: int = 50,
    on_step: Callable[[int, int], None] | None = None,
) -> str:
    """Fit (or reuse) the demo backbone from the tiny causal LM at ``base``; returns ``out_dir``.
    ``on_step(done, total)`` is called after each optimizer step."""
    from sentiray.config.mse_adapter import MseAdapterConfig
    from sentiray.data.schema import labels_for
    from sentiray.families.mse_adapter import RowEncoder, make_spec
    from sentiray.models.loading import load_model
    from sentiray.train.losses import target_ce

    signature = _signature(
        base,
        tasks=list(tasks),
        steps=steps,
        corpus_size=corpus_size,
        seed=seed,
        slot_share=slot_share,
        slot_noise=slot_noise,
        batch_size=batch_size,
        lr=lr,
    )
    marker = os.path.join(out_dir, MARKER)
    if os.path.isfile(marker) and json.load(open(marker)) == signature:
        if on_step is not None:
            on_step(steps, steps)
        return out_dir
    model, tokenizer = load_model(base, kind="causal_lm")
    rng = np.random.default_rng(seed)
    settings = MseAdapterConfig()
    encoders = {
        task: RowEncoder(
            tokenizer,
            make_spec(settings.model_copy(update={"text_only": True}), task, "synthetic", labels_for(task)),
            None,
        )
        for task in tasks
    }
    corpus = {task: _examples(task, corpus_size, seed, slot_share, encoders[task], rng) for task in tasks}
    start, n = encoders[tasks[0]].layout.pseudo_start, settings.pseudo_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    began = time.perf_counter()
    from sentiray import console

    bar = console.quiet_progress(steps, "demo backbone", unit="step")
    for step in range(1, steps + 1):
        task = tasks[step % len(tasks)]  # one task per batch: one prompt length per batch
        items = corpus[task]
        picked = torch.randint(len(items), (batch_size,), generator=gen).tolist()
        batch = _batch([items[i] for i in picked], pad)
        embeds = _embeds(model, batch, start, n, slot_noise, gen)
        # Logits of the answer positions only (the prompts of a task share one length, answers
        # are at the end): the LM head over every prompt position would be most of the work.
        keep = batch["input_ids"].shape[1] - len(items[0][0]) + 1
        logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
        loss = target_ce(logits, batch["labels"][:, -keep:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, steps)
        if bar is not None:
            bar.update(1)
        if step % log_every == 0 or step == steps:
            print(
                f"[demo backbone] step {step}/{steps} {task} loss {loss.item():.3f} "
                f"({time.perf_counter() - began:.0f}s)",
                flush=True,
            )
    if bar is not None:
        bar.close()
    model.eval()
    return _save(model, tokenizer, out_dir, signature)


def _save(model, tokenizer, out_dir: str, signature: dict) -> str:
    """Write into a sibling and rename: a crash never leaves a half folder that looks complete."""
    from sentiray.models.tiny import quiet_transformers

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{uuid.uuid4().hex[:8]}")
    with quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(signature, f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


if __name__ == "__main__":  # python -m sentiray.models.demo_backbone BASE OUT  (BASE: the tiny causal LM)
    import sys

    print(fit_demo_backbone(sys.argv[1], sys.argv[2]))
