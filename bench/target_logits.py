"""What computing logits only where the loss is taken saves a training step.

    python bench/target_logits.py [--steps 30] [--batch 16] [--threads 1]

MulCoT's streams take their loss on the target tokens only (the chain, the label), yet a
plain ``model(**batch).loss`` projects every prompt, image and padding position onto the
vocabulary first. ``losses.target_forward`` asks the model for the target positions' logits
only (transformers' ``logits_to_keep`` as a boolean mask). Both are timed here on the same
batches: the project's tiny VLM (CLIP tower + Qwen2, vocabulary 2000, built in a temporary
folder) on synthetic MulCoT chains (prompt with image -> gold chain),
forward + backward + AdamW. Prints ms per step, the peak size of the logits tensor, and
the ratios; the two losses agree to float precision (checked on the first batch).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from sentiray import prompts
    from sentiray.data import images, synthetic
    from sentiray.models.inputs import PromptEncoder
    from sentiray.models.loading import load_model
    from sentiray.models.tiny import build_tiny_vlm
    from sentiray.train import losses

    folder = build_tiny_vlm(tempfile.mkdtemp(prefix="bench-logits-"))
    model, processor = load_model(folder, kind="vlm")
    encoder = PromptEncoder(processor)
    rows = [r for r in synthetic.generate("msc", 200, seed=0).splits["train"] if r.get("gold_chain")]
    items = [encoder.encode(prompts.render("chain", r), images.load(r), r["gold_chain"], max_length=384) for r in rows]
    rng = random.Random(0)
    batches = [encoder.collate(rng.sample(items, args.batch)) for _ in range(args.warmup + args.steps)]

    def full(batch):
        out = model(**batch)
        return out.loss, out.logits

    def targets(batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        _, logits = losses.target_forward(model, inputs, batch["labels"])
        return losses.gathered_ce(logits, losses.target_tokens(batch["labels"])), logits

    with torch.no_grad():
        a, b = full(batches[0])[0].item(), targets(batches[0])[0].item()
    assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (a, b)

    rows_out = []
    for name, fn in (("every position (model(**batch).loss)", full), ("target positions (target_forward)", targets)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        peak = 0
        for i, batch in enumerate(batches):
            if i == args.warmup:
                start = time.perf_counter()
            loss, logits = fn(batch)
            peak = max(peak, logits.numel() * logits.element_size())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        ms = (time.perf_counter() - start) / args.steps * 1000
        rows_out.append((name, ms, peak / 2**20))

    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    share = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) / sum(b["labels"].numel() for b in batches)
    print(
        f"tiny VLM, batch {args.batch}, {tokens:.0f} tokens per batch (target share of positions {share:.2f}), "
        f"{args.threads} thread(s), {args.steps} steps"
    )
    print("| logits computed at | ms per step | logits tensor (MB) |")
    print("| --- | --- | --- |")
    for name, ms, mb in rows_out:
        print(f"| {name} | {ms:.1f} | {mb:.1f} |")
    (_, full_ms, full_mb), (_, ours_ms, ours_mb) = rows_out
    print(f"step time target / every: {ours_ms / full_ms:.2f}; logits memory target / every: {ours_mb / full_mb:.2f}")


if __name__ == "__main__":
    main()
