"""The demo's teacher: the tiny VLM, briefly fitted on the synthetic gold chains.

A tiny model with random weights writes noise, so the demo's rationales and its reasoning
metrics would mean nothing. ``fit_demo_teacher`` gives the demo a teacher that writes
chains in the MulCoT format with mostly correct predictions: a short, plain-PyTorch
fine-tune of the tiny VLM on the *train* split's gold chains (never dev or test), for
every prompt kind the teacher stage uses (label-free chain, label-conditioned
rationalization, LRSA's text explanation and image description; mabsa rows, which have no
post label, only the latter two). :func:`rationale_signal` measures how often its LRSA
rationales carry the planted signal. The result is an
ordinary HF folder that goes through the very same ``hf`` backend as any real teacher.

It is a stand-in, and says so: it has seen the gold chains of the samples it then
annotates, so its train accuracy is not a teacher quality figure; dev/test show how far
it generalises. The fit is cached: a folder whose marker matches the arguments is reused.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch

from sentiray import prompts
from sentiray.data import chains, images, schema, storage
from sentiray.prompts.parsing import parse_label

MARKER = ".sentiray-demo-teacher.json"
RECIPE_VERSION = 3  # 3: aspect posts' explanations per post, mabsa rows, a look prompt of its own
DESCRIPTION = (
    "demo teacher: the tiny random-weight VLM fitted for a few hundred steps on the synthetic train split's "
    "gold chains (a stand-in for a large teacher such as Qwen2.5-VL-72B)"
)


# Stage 1's question (the image alone, a one-word answer); not a prompt the teacher stage asks.
LOOK_PROMPT = "What mood does this picture convey? Answer with one word: positive, neutral or negative."
ASPECT_TASKS = ("masc", "mabsa")


def training_examples(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, prompt, target) for one row with a gold chain: one per teacher prompt kind, plus
    ``look``: the image's mood word, asked of the image alone (the fit's stage 1).

    A row without a label (mabsa: spans, no post label) gets the LRSA rationales only: the
    chains there would go unused (LRSA does not read them)."""
    chain = row["gold_chain"]
    fields = chains.parse_chain(chain)
    out = []
    if row.get("label"):
        out += [
            ("chain", prompts.render("chain", row), chain),
            ("rationalize", prompts.render("rationalize", row, label=row["label"]), chain),
        ]
    # LRSA rationales: the chain's text and image analyses are what those prompts ask for; on
    # aspect posts the explanation covers every aspect of the post in order (the prompt names
    # none, so the rows of one post must share one target).
    explanation = fields.get("Text_analysis")
    if row.get("task") in ASPECT_TASKS and row.get("meta"):
        from sentiray.data import synthetic

        explanation = synthetic.aspect_rationales(row)["text_explanation"]
    if explanation:
        out.append(("explain_text", prompts.render("explain_text", row), explanation))
    if fields.get("Image_analysis") and prompts.has_image(row):
        out.append(("describe_image", prompts.render("describe_image", row), fields["Image_analysis"]))
        mood = parse_label(fields["Image_analysis"])
        if mood:
            out.append(("look", LOOK_PROMPT, mood))
    return out


def rationale_signal(rows: list[dict[str, Any]]) -> dict[str, float]:
    """How often LRSA rationales written for synthetic aspect rows carry what was planted: the
    image description names the picture's mood (all rows, and the rows where only the picture
    decides the main aspect); the text explanation's k-th sentence gives the k-th aspect's stance
    as planted (``text_stance``) and names it right (``text_terms``); the whole explanation is
    the gold one word for word (``text_exact``)."""
    import json

    from sentiray.data import synthetic

    mood, mood_implicit, stance, terms, exact = [], [], [], [], []
    for row in rows:
        meta = json.loads(row["meta"])
        if row.get("image_description") is not None:
            hit = parse_label(row["image_description"]) == meta["image_sentiment"]
            mood.append(hit)
            if meta["aspects"] and meta["aspects"][0]["implicit"]:
                mood_implicit.append(hit)
        explanation = row.get("text_explanation")
        if explanation is not None:
            exact.append(explanation.strip() == synthetic.aspect_rationales(row)["text_explanation"])
            sentences = [x for x in explanation.split(". ") if x.strip()]  # one per aspect, in text order
            for k, aspect in enumerate(meta["aspects"]):
                reading = sentences[k] if k < len(sentences) else ""
                stance.append(parse_label(reading) == aspect["text_stance"])
                terms.append(f"'{aspect['term']}'" in reading)
    share = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "image_mood": share(mood),
        "image_mood_implicit": share(mood_implicit),
        "text_stance": share(stance),
        "text_terms": share(terms),
        "text_exact": share(exact),
        "rows": float(len(rows)),
    }


def _train(
    model,
    encoder,
    items,
    steps: int,
    groups: list[dict[str, Any]],
    batch_size: int,
    rng: random.Random,
    warmup: bool,
    log_every: int,
    stage: str,
    on_step: Callable[[int], None] | None = None,
    target_logits: bool = False,
) -> None:
    """``steps`` AdamW steps on random batches of ``items`` (loss on target tokens only)."""
    if steps <= 0:
        return
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    n_warm = max(1, steps // 20) if warmup else 0

    def factor(s: int) -> float:  # linear warm-up, then cosine decay to zero
        if s < n_warm:
            return (s + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (s - n_warm) / max(1, steps - n_warm))) if warmup else 1.0

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    from sentiray import console
    from sentiray.train import losses

    bar = console.quiet_progress(steps, f"demo teacher ({stage})", unit="step")
    order: list[int] = []
    start, recent = time.perf_counter(), []
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += rng.sample(range(len(items)), len(items))
        batch_ids, order = order[:batch_size], order[batch_size:]
        batch = encoder.collate([items[i] for i in batch_ids])
        if target_logits:
            labels = batch.pop("labels")
            _, logits = losses.target_forward(model, batch, labels)
            loss = losses.gathered_ce(logits, losses.target_tokens(labels))
        else:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if on_step is not None:
            on_step(step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {loss.item():.3f}", refresh=False)
        if step % log_every == 0 or step == steps:
            elapsed = time.perf_counter() - start
            print(
                f"demo teacher [{stage}]: step {step}/{steps}  loss {sum(recent) / len(recent):.3f}  "
                f"{step / elapsed:.1f} steps/s  ETA {elapsed / step * (steps - step):.0f}s"
            )
            recent = []
    if bar is not None:
        bar.close()


def _signature(vlm_path: str, data_uri: str, **settings: Any) -> dict[str, Any]:
    return {"vlm": os.path.abspath(vlm_path), "data": data_uri, **settings, "recipe": RECIPE_VERSION}


def is_fitted(out_dir: str, signature: dict[str, Any]) -> bool:
    try:
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f).get("signature") == signature
    except (OSError, ValueError):
        return False


def fit_demo_teacher(
    vlm_path: str,
    data_uri: str,
    out_dir: str,
    steps: int = 600,
    align_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 5e-3,
    max_length: int = 384,
    align_lr: float = 1e-3,
    vision_lr_scale: float = 0.1,
    log_every: int = 50,
    kinds: tuple[str, ...] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    target_logits: bool = False,
) -> str:
    """Fit the tiny VLM at ``vlm_path`` on the gold chains of ``data_uri``'s train split.

    Writes an HF folder to ``out_dir`` (local) and returns its path; a folder already
    fitted with the same arguments is returned as is. ``kinds``: the prompt kinds to learn
    (default all: chain, rationalize, explain_text, describe_image); a MulCoT teacher needs only
    the first two, and learns them better in the same steps without the others. ``on_step(done,
    total)`` is called after each optimizer step (both stages count).

    ``target_logits``: compute the logits of the target positions only (``losses.target_forward``,
    0.71x the step time on the tiny VLM). The loss is the same to float precision, but a tiny
    model's fit at this rate follows the rounding: with it the MulCoT teacher's pass-1 accuracy
    rose from 0.62 to 0.90, and the LRSA teacher's text-stance signal on unseen posts fell from
    0.89 to 0.50 (tests/teacher/test_demo_teacher_lrsa.py). Each demo teacher keeps the setting
    it was checked with (the demo: MulCoT on, LRSA off).
    """
    from sentiray.models.inputs import PromptEncoder
    from sentiray.models.loading import load_model, save_model

    out_dir = os.path.abspath(out_dir)
    signature = _signature(
        vlm_path,
        data_uri,
        steps=steps,
        align_steps=align_steps,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        align_lr=align_lr,
        vision_lr_scale=vision_lr_scale,
        max_length=max_length,
        **({"kinds": list(kinds)} if kinds else {}),  # absent by default: folders fitted before stay valid
        **({"target_logits": True} if target_logits else {}),
    )
    align_steps = align_steps if align_steps is not None else steps // 2
    total = align_steps + steps
    if is_fitted(out_dir, signature):
        print(f"demo teacher: reusing {out_dir}")
        if on_step is not None:
            on_step(total, total)
        return out_dir

    rows = [r for r in schema.read_rows(data_uri, "train") if r.get("gold_chain")]
    if not rows:
        raise schema.DataError(f"{data_uri} has no train rows with a gold_chain to fit the demo teacher on")

    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random stream
        torch.manual_seed(seed)
        model, processor = load_model(vlm_path, kind="vlm")
        encoder = PromptEncoder(processor)
        items, look_items = [], []
        for row in rows:
            image = images.load(row)
            for kind, prompt, target in training_examples(row):
                if kinds and kind != "look" and kind not in kinds:
                    continue
                # as the pipeline asks: the text explanation without the image, all else with it
                item = encoder.encode(prompt, None if kind == "explain_text" else image, target, max_length=max_length)
                (look_items if kind == "look" else items).append(item)
        print(
            f"demo teacher: fitting {vlm_path} on {len(rows)} train rows: {align_steps} steps on the images' moods "
            f"({len(look_items)} examples), then {steps} on {len(items)} examples of every prompt kind"
        )
        rng = random.Random(seed)
        vision = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
        vision_ids = {id(p) for p in vision}
        text = [p for p in model.parameters() if id(p) not in vision_ids]
        model.train()
        # Stage 1, as LLaVA's: learn to look. Given the post's text a tiny model guesses the
        # picture from the words (they agree in most posts) and never uses the image; a high
        # rate at the start also saturates the random vision features for good. So first the
        # image alone, a one-word answer, a gentle rate.
        _train(
            model,
            encoder,
            look_items,
            align_steps,
            [{"params": model.parameters(), "lr": align_lr}],
            batch_size,
            rng,
            warmup=False,
            log_every=log_every,
            stage="align",
            on_step=None if on_step is None else lambda k: on_step(k, total),
            target_logits=target_logits,
        )
        # Stage 2: every prompt kind; the language model at full rate, the vision side gently.
        groups = [{"params": text, "lr": lr}, {"params": vision, "lr": lr * vision_lr_scale}]
        _train(
            model,
            encoder,
            items,
            steps,
            groups,
            batch_size,
            rng,
            warmup=True,
            log_every=log_every,
            stage="fit",
            on_step=None if on_step is None else lambda k: on_step(align_steps + k, total),
            target_logits=target_logits,
        )
        model.eval()

    # Write beside the target and rename: a crash never leaves a folder that looks fitted.
    tmp = f"{out_dir}.partial-{uuid.uuid4().hex[:8]}"
    try:
        save_model(model, processor, tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"signature": signature, "description": DESCRIPTION, "train_rows": len(rows)}, f, indent=2)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"demo teacher: wrote {out_dir}")
    return out_dir


def describe(path: str) -> str:
    """What the teacher at ``path`` is, for the demo to print (the marker's description)."""
    marker = os.path.join(path, MARKER)
    if storage.exists(marker):
        return storage.read_json(marker).get("description", DESCRIPTION)
    return f"teacher model at {path}"
