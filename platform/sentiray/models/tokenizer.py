"""Tokenizers trained locally with the ``tokenizers`` library (no hub download).

``train_tokenizer`` gives a byte-level BPE tokenizer in the shape of Qwen's: ChatML special
tokens, an ``<image>`` placeholder for the vision-language model and a chat template that
accepts message content as a string or as a list of ``{"type": "text"|"image"}`` parts.
The tiny VLM and the tiny causal LM share it, so their vocabularies match (knowledge
distillation between them compares token distributions position by position).

``train_wordpiece_tokenizer`` gives a BERT-style tokenizer for the tiny text encoder.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import (
    PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX,
)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
# Order fixes the ids: 0..3, the same in every build.
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN]

# Qwen/ChatML chat template. Message content is either a string or a list of parts;
# an image part renders as one ``<image>`` placeholder, which the LLaVA processor then
# expands to as many tokens as the vision tower yields patches.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}"
    "{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\n' -}}"
    "{%- endif -%}"
)

# ----------------------------------------------------------------------------- built-in corpus

POSITIVE = (
    "good great happy love excellent amazing wonderful fantastic nice awesome beautiful best "
    "glad delighted pleased enjoy enjoyed lovely brilliant perfect proud excited fun cheerful "
    "win success smile favorite impressive hopeful grateful thankful positive"
).split()
NEUTRAL = (
    "okay fine average usual normal ordinary plain standard regular typical moderate fair "
    "factual informative calm steady neutral mixed unclear balanced"
).split()
NEGATIVE = (
    "bad terrible awful hate horrible poor worst sad angry annoying disappointing boring "
    "ugly broken fail failure upset painful worried afraid scary disgusting rude slow "
    "wrong loss crying negative"
).split()
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
CHAIN_FIELDS = ("Text_analysis", "Image_analysis", "Conflict_resolution", "Final_conclusion", "Prediction")
SUBJECTS = tuple(
    f"the {s}"
    for s in (
        "movie",
        "game",
        "phone",
        "team",
        "food",
        "weather",
        "concert",
        "city",
        "president",
        "new album",
        "service",
        "hotel",
        "show",
        "match",
        "flight",
        "photo",
    )
)
COMMON = (
    "the a an and or but is are was were be been it this that these those i you he she we "
    "they my your his her our their of to in on at for with from by about as not no yes "
    "very so too really just also more most less what which who when where why how text "
    "image picture shows tweet post user people person face scene sentiment emotion aspect "
    "target label analysis reasoning because however although overall therefore conflict "
    "resolution final conclusion prediction answer question describe explain step think "
    "visual textual modality score polarity intensity"
).split()
SENTENCE_TEMPLATES = (
    "{subj} was {word} .",
    "I think {subj} is {word} today!",
    "The text says {subj} is {word}, and the image shows a {word} scene.",
    "Overall the sentiment toward {subj} is {label}.",
    "The user feels {emotion} about {subj}.",
    "Analyze the sentiment of the text and the image about {subj}.",
    "The image depicts {subj}; the face looks {word}.",
    "Text and image conflict: the text is {word} but the picture is {label}.",
)


def _chain_json(subj: str, word: str, label: str, score: float) -> str:
    """One MulCoT-style reasoning chain, as the teacher would write it."""
    parts = [
        f'"Text_analysis": "The text calls {subj} {word}."',
        f'"Image_analysis": "The image shows {subj} with a {label} mood."',
        '"Conflict_resolution": "Text and image agree."',
        f'"Final_conclusion": "The overall sentiment is {label} ({score:.1f})."',
        f'"Prediction": "{label}"',
    ]
    return "{" + ", ".join(parts) + "}"


def builtin_corpus() -> list[str]:
    """A deterministic English sentiment corpus: the words our prompts and chains use."""
    lines: list[str] = []
    words = POSITIVE + NEUTRAL + NEGATIVE
    labels = ("positive", "neutral", "negative")
    scores = [round(x * 0.1, 1) for x in range(-30, 31)]
    for i, (subj, word) in enumerate(itertools.product(SUBJECTS, words)):
        label = labels[i % 3]
        emotion = EMOTIONS[i % len(EMOTIONS)]
        template = SENTENCE_TEMPLATES[i % len(SENTENCE_TEMPLATES)]
        sentence = template.format(subj=subj, word=word, label=label, emotion=emotion)
        lines.append(sentence)
        if i % 4 == 0:
            chain = _chain_json(subj, word, label, scores[i % len(scores)])
            lines.append(chain)
            # Chat-formatted turns, so that role names encode as single tokens.
            lines.append(f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n")
            lines.append(f"{IM_START}user\n{IMAGE_TOKEN}{sentence}{IM_END}\n")
            lines.append(f"{IM_START}assistant\n{chain}{IM_END}\n")
    lines.append(" ".join(COMMON))
    lines.append(" ".join(words + list(EMOTIONS) + list(CHAIN_FIELDS)))
    lines.append(" ".join(f"{s:.1f}" for s in scores) + " 0 1 2 3 4 5 6 7 8 9 10 100")
    lines.append('{"Prediction": "neutral"} [1, 2, 3] {"score": -1.5} : , " ( ) ? ! .')
    lines.extend(_prompt_and_synthetic_corpus())
    return lines


def _prompt_and_synthetic_corpus() -> list[str]:
    """The prompt templates and a sample of the synthetic world (texts and gold chains), so
    that tiny models see their prompts and targets as a few hundred tokens, not a thousand
    bytes: training and generation in tests and the demo stay fast."""
    from sentiray import prompts
    from sentiray.data import synthetic

    lines = [p.read_text() for p in sorted(prompts.TEMPLATE_DIR.glob("*.txt"))]
    for task in ("msc", "masc", "mabsa", "msa", "erc"):
        for rows in synthetic.generate(task, 150, seed=12345).splits.values():
            for row in rows:
                lines.append(row["text"])
                if row.get("gold_chain"):
                    lines.append(row["gold_chain"])
    return lines


def _corpus(extra: Iterable[str] | None) -> Iterator[str]:
    yield from builtin_corpus()
    if extra is not None:
        yield from extra


# ----------------------------------------------------------------------------- BPE (Qwen-like)


def train_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 2000,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus plus ``corpus``.

    Byte-level means every string encodes (no unknown token), like Qwen's. Deterministic
    for the same inputs. ``padding_side="left"`` is what batched generation wants.
    """
    tok = Tokenizer(models.BPE())
    # Exactly Qwen2's normalizer and pre-tokenizer: transformers' AutoTokenizer rebuilds a
    # qwen2 model's tokenizer as Qwen2Tokenizer with these hard-coded (ignoring the ones
    # in tokenizer.json), while the LLaVA processor loads tokenizer.json as is. Anything
    # else would make the tiny causal LM and the tiny VLM tokenize differently.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # No BOS/EOS added on encode, as Qwen: the chat template writes the markers itself.
    tok.post_processor = processors.ByteLevel(trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(corpus), trainer=trainer)

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        # As Qwen2.5-Instruct: an assistant turn ends with <|im_end|>, so that is EOS
        # for generation; <|endoftext|> pads (and also stops generation, see tiny.py).
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side=padding_side,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


# ----------------------------------------------------------------------------- WordPiece (BERT-like)


def train_wordpiece_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer with ``[CLS] ... [SEP]``, as BERT's, for the encoder."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus(corpus), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token=None,
        eos_token=None,
        model_max_length=512,
    )
