"""Prompt encoding, batched generation and label scoring with the tiny models."""

import torch

from sentiray import prompts
from sentiray.data import images, synthetic
from sentiray.models.generation import Generator
from sentiray.models.inputs import PromptEncoder
from sentiray.models.loading import load_model, prepare_for_generation
from sentiray.models.tiny import NUM_IMAGE_TOKENS


def rows(n=3):
    return synthetic.generate("msc", 20, seed=3).splits["train"][:n]


def test_encode_masks_prompt_and_padding(tiny_models):
    _, processor = load_model(tiny_models["vlm"], kind="vlm")
    enc = PromptEncoder(processor)
    r = rows(2)
    items = [enc.encode(prompts.render("chain", x), images.load(x), x["gold_chain"], max_length=512) for x in r]
    items.append(enc.encode("no image here", None, "short", max_length=512))
    image_id = enc.tokenizer.convert_tokens_to_ids(enc.tokenizer.image_token)
    assert items[0].input_ids[: items[0].prompt_len].count(image_id) == NUM_IMAGE_TOKENS
    batch = enc.collate(items)
    assert batch["pixel_values"].shape[0] == 2  # only the rows with images
    for i, item in enumerate(items):
        n_target = len(item.input_ids) - item.prompt_len
        assert int((batch["labels"][i] != -100).sum()) == n_target
        # the targets are the chain's tokens followed by eos
        got = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert got[-1] == enc.eos_id
    # truncation cuts the target, never the prompt
    short = enc.encode(
        prompts.render("chain", r[0]), images.load(r[0]), r[0]["gold_chain"], max_length=items[0].prompt_len + 5
    )
    assert len(short.input_ids) == items[0].prompt_len + 5


def test_generate_and_score_batch(tiny_models):
    model, processor = load_model(tiny_models["vlm"], kind="vlm", for_generation=True)
    prepare_for_generation(model, processor)
    gen = Generator(model, processor, max_new_tokens=12)
    r = rows(3)
    texts = [prompts.render("chain", x) for x in r]
    imgs = [images.load(x) for x in r]
    imgs[1] = None  # a row without an image in the same batch
    out = gen.generate(texts, imgs)
    assert len(out) == 3 and all(0 < o.new_tokens <= 12 for o in out)
    # greedy decoding is deterministic and independent of batch composition
    alone = gen.generate(texts[:1], imgs[:1])
    assert alone[0].text == out[0].text
    sampled = gen.generate(texts, imgs, temperature=0.7, seed=1)
    assert len(sampled) == 3
    scores = gen.label_logprobs(texts, imgs, ["positive", "neutral", "negative"])
    assert scores.shape == (3, 3) and torch.all(scores < 0)
    probs = torch.softmax(scores, -1)
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_causal_lm_without_images(tiny_models):
    model, tok = load_model(tiny_models["causal_lm"], kind="causal_lm", for_generation=True)
    gen = Generator(model, tok, max_new_tokens=5)
    out = gen.generate(["Say something"], [None])
    assert out[0].new_tokens <= 5
    assert gen.label_logprobs(["x"], [None], ["joy", "anger"]).shape == (1, 2)
