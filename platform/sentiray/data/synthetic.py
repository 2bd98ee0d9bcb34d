"""Synthetic data for every task, with a real, learnable signal planted in each modality.

``generate(task, size, seed)`` returns a :class:`~sentiray.data.schema.PreparedDataset`
of canonical rows (source ``"synthetic"``). What is planted, per task:

* ``msc``: a tweet built from templates whose sentiment words (:data:`SENTIMENT_ADJECTIVES`,
  :data:`SENTIMENT_VERBS`, or objective :data:`NEUTRAL_WORDS`) give the *text* sentiment,
  and a drawn picture whose main object gives the *image* sentiment (sun / smiling face =
  positive, storm cloud / frowning face = negative, plain grey or blue geometric object =
  neutral), placed at random with distractor shapes and a textured background. About
  :data:`MSC_CONFLICT_SHARE` of the posts are conflicting; their gold label follows
  :data:`FUSION_RULE` (see :func:`fuse`), which needs both modalities.
* ``masc``: a tweet about one or two named aspects (:data:`ASPECTS`), each with its own
  sentiment word right next to it; the picture shows the mood of the *main* (first)
  aspect. In :data:`IMPLICIT_SHARE` of the posts the main aspect is named with no cue word
  at all (:data:`IMPLICIT_CLAUSES`, ``meta.aspects[0].implicit``) and only the picture
  decides its polarity, uniformly one of the three: the words of such a post say nothing
  about it (nor does the connector to a second aspect, which follows the words' stance),
  so a text-only model is at chance (1/3) on those aspects. One row per (post, aspect).
* ``mabsa``: the same posts, one row per post, with ``words`` and ``spans``.
* ``msa``: a score in [-3, 3] (some exactly 0), words whose intensity matches it
  (:data:`MSA_INTENSITY_WORDS`), and audio / vision sequences whose patterns encode it (see
  :func:`_msa_features`); some texts are neutral and only the features carry the score.
* ``erc``: dialogues of utterances with a speaker and one of seven emotions; cue words per
  emotion (:data:`EMOTION_WORDS`) and audio / vision patterns per emotion
  (:data:`EMOTION_SIGNALS`); some utterances have flat words and only the voice and face
  carry the emotion.

Every row carries a ``gold_chain`` in the MulCoT-RD field format (:func:`format_chain`)
that describes what was actually planted, and a JSON ``meta`` with the generator's ground
truth. Generation is deterministic: the same arguments give byte-identical rows.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sentiray.data.chains import format_chain, parse_chain  # noqa: F401 (re-exported)
from sentiray.data.schema import (
    EMOTION_LABELS,
    SENTIMENT_LABELS,
    SPLITS,
    TASKS,
    DataError,
    PreparedDataset,
    canonical_row,
)

SOURCE = "synthetic"

# --------------------------------------------------------------------------- vocabularies
# Everything a model can learn from the text is in these constants.

SENTIMENT_ADJECTIVES = {
    "positive": (
        "happy",
        "great",
        "wonderful",
        "amazing",
        "beautiful",
        "excited",
        "fantastic",
        "lovely",
        "awesome",
        "glad",
        "brilliant",
        "delighted",
    ),
    "negative": (
        "awful",
        "angry",
        "terrible",
        "horrible",
        "sad",
        "disappointing",
        "upset",
        "furious",
        "miserable",
        "annoying",
        "scared",
        "disgusting",
    ),
}
SENTIMENT_VERBS = {
    "positive": ("love", "adore", "enjoy"),
    "negative": ("hate", "dread", "detest"),
}
# Objective wording: a neutral text uses these and no sentiment word.
NEUTRAL_WORDS = (
    "scheduled",
    "announced",
    "listed",
    "planned",
    "updated",
    "open",
    "unchanged",
    "reported",
    "located",
    "available",
    "expected",
    "confirmed",
)

TOPICS = (
    "concert",
    "match",
    "meeting",
    "festival",
    "game",
    "trip",
    "parade",
    "lecture",
    "market",
    "premiere",
    "launch",
    "exhibition",
    "election",
    "flight",
    "show",
    "dinner",
)
TIMES = ("today", "tonight", "this morning", "yesterday", "this weekend", "on friday", "last night", "at noon")
FILLERS = ("well", "so", "ok", "btw", "fyi", "anyway", "hey", "look")
TAGS = ("", "", "#weekend", "#news", "#photo", "#life", "#citylife", "#update", "#live")

# Post-level templates; {adj}/{adj2} are cue words of the text's sentiment, {verb} a cue verb.
POLAR_TEMPLATES = (
    "the {topic} {time} was {adj} {tag}",
    "{time} at the {topic} : {adj} and {adj2} {tag}",
    "feeling {adj} about the {topic} {tag}",
    "{filler} , the {topic} is {adj} {tag}",
    "i {verb} the {topic} {time} {tag}",
    "i {verb} this {topic} , so {adj} {tag}",
)
NEUTRAL_TEMPLATES = (
    "the {topic} {time} is {adj} {tag}",
    "update : {topic} {adj} for {time} {tag}",
    "{filler} , the {topic} was {adj} {time} {tag}",
    "the {topic} is {adj} and {adj2} {tag}",
)

# Aspect-level: named entities (fictional people, real places, fictional products).
ASPECTS = (
    "Maya Chen",
    "Jon Rivera",
    "Coach Miller",
    "Dr. Patel",
    "Lena Fischer",
    "Sam Okafor",
    "Ana Silva",
    "Tom Becker",
    "Paris",
    "Boston",
    "Central Park",
    "Tokyo",
    "Lake Geneva",
    "Union Station",
    "Berlin",
    "AeroPhone",
    "Zenbook X",
    "SkyBus",
    "Riverside Rovers",
    "Nova Coffee",
    "PixelCam 3",
    "Orbit Airlines",
)
# One clause per aspect; the cue word ({cue}) sits right next to the aspect ({A}) so the
# text binds each sentiment to its aspect.
ASPECT_CLAUSES = {
    "positive": ("{A} was {cue} {time}", "{A} looks {cue}", "{cue} time with {A}", "so {cue} to see {A}"),
    "negative": ("{A} was {cue} {time}", "{A} looks {cue}", "{cue} time with {A}", "so {cue} to see {A}"),
    "neutral": ("{A} is {cue} for {time}", "{A} was {cue} {time}", "{A} {cue} a new {topic}"),
}
# A mention of the main aspect without any sentiment word (the picture carries its mood).
IMPLICIT_CLAUSES = ("{A} at the {topic} {time}", "with {A} at the {topic}", "{A} {time}")
# Share of aspect posts whose main aspect is implicit (its polarity is the picture's, any of
# the three): about a quarter of masc rows, the rows where reading the image is the only way.
IMPLICIT_SHARE = 0.35
NEUTRAL_ASPECT_WORDS = ("scheduled", "announced", "listed", "planned", "updated", "confirmed")

# msa: four intensity tiers per sign; |score| picks the tier (see _msa_tier).
MSA_INTENSITY_WORDS = {
    "positive": (
        ("okay", "fine", "decent", "alright"),
        ("good", "nice", "enjoyable", "pleasant"),
        ("great", "excellent", "wonderful", "fantastic"),
        ("amazing", "incredible", "perfect", "brilliant"),
    ),
    "negative": (
        ("meh", "mediocre", "bland", "forgettable"),
        ("bad", "boring", "dull", "weak"),
        ("awful", "terrible", "painful", "horrible"),
        ("atrocious", "unbearable", "disastrous", "worst"),
    ),
}
MSA_TIER_NAMES = ("weak", "moderate", "strong", "extreme")
MSA_TIER_EDGES = (0.75, 1.5, 2.25)  # |score| <= edge -> tier index
MSA_POLAR_TEMPLATES = (
    "the movie was {w}",
    "i thought the acting was {w} and the story {w2}",
    "honestly it was {w}",
    "the ending was {w} , really {w2}",
    "overall i found it {w}",
    "the soundtrack is {w} and the cast {w2}",
)
MSA_NEUTRAL_TEMPLATES = (
    "the movie is about a {subject}",
    "it came out last year and runs two hours",
    "the film follows a {subject}",
    "i saw it on a tuesday with a friend",
    "the director also made a film about a {subject}",
)
MSA_SUBJECTS = ("detective", "family", "soldier", "teacher", "robot", "chef", "pilot", "small town")
MSA_ZERO_SHARE = 0.1  # share of samples with score exactly 0
MSA_FLAT_TEXT_SHARE = 0.2  # share of non-zero samples whose words are neutral (features carry the score)

# erc: cue words per emotion; neutral utterances (and flat ones) use only NEUTRAL_UTTERANCES.
EMOTION_WORDS = {
    "neutral": (),
    "surprise": ("wow", "whoa", "seriously", "no way", "really"),
    "fear": ("scared", "afraid", "nervous", "terrified", "worried"),
    "sadness": ("sorry", "miss", "lonely", "sad", "crying"),
    "joy": ("great", "awesome", "yay", "love", "wonderful"),
    "disgust": ("gross", "ew", "disgusting", "nasty", "yuck"),
    "anger": ("furious", "hate", "ridiculous", "shut up", "enough"),
}
NEUTRAL_UTTERANCES = (
    "i'll get the {obj} {time}",
    "did you see the {obj}",
    "we're meeting at the {place}",
    "the {obj} is in the kitchen",
    "he said the {obj} was at the {place}",
    "can you pass me the {obj}",
    "she's at the {place} {time}",
)
EMOTION_TEMPLATES = ("{cue} ! {sent}", "{sent} . {cue}", "oh {cue} , {sent}", "{cue} . {sent}")
ERC_OBJECTS = ("coffee", "keys", "couch", "letter", "sandwich", "tickets", "phone", "jacket")
ERC_PLACES = ("coffee house", "apartment", "museum", "office", "restaurant", "airport")
SPEAKERS = ("Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe", "Gunther", "Janice")
# MELD-like imbalance: neutral is the most common class.
EMOTION_WEIGHTS = {
    "neutral": 0.30,
    "surprise": 0.12,
    "fear": 0.09,
    "sadness": 0.10,
    "joy": 0.17,
    "disgust": 0.10,
    "anger": 0.12,
}
# (arousal, valence) in [-1, 1]: drive the prosody and face patterns (see _erc_features).
EMOTION_SIGNALS = {
    "neutral": (-0.6, 0.0),
    "surprise": (0.8, 0.3),
    "fear": (0.5, -0.6),
    "sadness": (-0.8, -0.7),
    "joy": (0.6, 0.8),
    "disgust": (0.0, -0.8),
    "anger": (0.9, -0.9),
}
ERC_FLAT_TEXT_SHARE = 0.2  # share of emotional utterances whose words are neutral
AUDIO_DIM, VISION_DIM = 20, 12
AUDIO_LEN, VISION_LEN = (10, 40), (8, 30)  # inclusive ranges of T_a, T_v

# msc: how many posts have text and image sentiments that differ.
MSC_CONFLICT_SHARE = 0.27

# --------------------------------------------------------------------------- fusion rule

FUSION_RULE = (
    "severity order negative > positive > neutral: when text and image agree the label is that "
    "sentiment; a polar modality beats a neutral one (text polar + image neutral -> text's label, "
    "text neutral + image polar -> image's label); positive text with a negative image is irony or "
    "sarcasm -> negative; negative text with a positive image is a complaint that a cheerful picture "
    "does not cancel -> negative"
)


def fuse(text_sentiment: str, image_sentiment: str) -> tuple[str, str]:
    """Post label from the two modality sentiments, and the name of the rule that decided."""
    if text_sentiment == image_sentiment:
        return text_sentiment, "agree"
    if "neutral" in (text_sentiment, image_sentiment):
        polar = image_sentiment if text_sentiment == "neutral" else text_sentiment
        return polar, "polar_over_neutral"
    if text_sentiment == "positive":
        return "negative", "irony"  # cheerful words over a gloomy picture
    return "negative", "complaint_stands"  # negative words over a cheerful picture


# --------------------------------------------------------------------------- small helpers

Rng = np.random.Generator


def _pick(rng: Rng, seq: Sequence[Any]) -> Any:
    # Faster than rng.choice for a short tuple (no array conversion).
    return seq[int(rng.integers(len(seq)))]


def _pick_two(rng: Rng, seq: Sequence[Any]) -> tuple[Any, Any]:
    i, j = rng.choice(len(seq), size=2, replace=False)
    return seq[int(i)], seq[int(j)]


def _quote(words: Sequence[str]) -> str:
    uniq = list(dict.fromkeys(words))
    quoted = [f"'{w}'" for w in uniq]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _tidy(text: str) -> str:
    return " ".join(text.split())


def _floats(arr: np.ndarray) -> np.ndarray:
    # T x D float32, what the Parquet column holds: 4 bytes a value, not a Python float each.
    return np.ascontiguousarray(arr, dtype=np.float32)


def split_counts(size: int, ratios: Sequence[float]) -> dict[str, int]:
    """Rows per split: train and dev rounded from the ratios, test gets the rest."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"split_ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    n_train = min(size, int(round(size * ratios[0])))
    n_dev = min(size - n_train, int(round(size * ratios[1])))
    return {"train": n_train, "dev": n_dev, "test": size - n_train - n_dev}


# --------------------------------------------------------------------------- images

# Main objects per sentiment: kind -> how the gold chain describes it (drawn by _draw_main).
IMAGE_OBJECTS = {
    "positive": {"sun": "a bright yellow sun with rays", "smiley": "a yellow smiling face"},
    "negative": {"storm_cloud": "a dark grey storm cloud with rain", "frown": "a grey-blue frowning face with a tear"},
    "neutral": {
        "square": "a plain grey square",
        "rectangle": "a plain steel-blue rectangle",
        "triangle": "a plain slate-grey triangle",
    },
}
IMAGE_MOODS = {
    "positive": "it conveys a cheerful, positive mood",
    "negative": "it conveys a gloomy, negative mood",
    "neutral": "it carries no emotion, so the picture is neutral",
}
BACKGROUNDS = {
    "light blue": (200, 220, 235),
    "beige": (225, 220, 200),
    "mint": (205, 230, 210),
    "pink": (235, 212, 222),
    "light grey": (205, 205, 210),
    "lavender": (215, 210, 235),
}
DISTRACTOR_COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 150, 60),
    "purple": (130, 60, 160),
    "orange": (235, 135, 30),
    "white": (245, 245, 245),
    "brown": (120, 80, 40),
}
DISTRACTOR_KINDS = ("dot", "bar", "ring", "cross")
_POSITIONS = (
    ("upper left", "top", "upper right"),
    ("left", "centre", "right"),
    ("lower left", "bottom", "lower right"),
)


def _jitter(rng: Rng, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(min(255, max(0, c + int(x)))) for c, x in zip(colour, d))


def _draw_main(draw: ImageDraw.ImageDraw, rng: Rng, kind: str, box: tuple[int, int, int, int], size: int) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    line = max(1, size // 32)
    if kind == "sun":
        r = w * 0.3
        for k in range(8):  # rays
            a = k * math.pi / 4 + float(rng.uniform(0, 0.3))
            draw.line(
                [
                    (cx + r * 1.2 * math.cos(a), cy + r * 1.2 * math.sin(a)),
                    (cx + w / 2 * math.cos(a), cy + h / 2 * math.sin(a)),
                ],
                fill=_jitter(rng, (250, 200, 20), 8),
                width=line,
            )
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, (252, 215, 20), 8))
    elif kind in ("smiley", "frown"):
        face = (250, 210, 40) if kind == "smiley" else (120, 135, 165)
        draw.ellipse(box, fill=_jitter(rng, face, 10), outline=(60, 50, 30), width=line)
        er = max(1, w // 12)
        for ex in (x0 + w * 0.33, x0 + w * 0.67):
            draw.ellipse([ex - er, y0 + h * 0.35 - er, ex + er, y0 + h * 0.35 + er], fill=(20, 20, 20))
        mouth = [x0 + w * 0.25, y0 + h * 0.45, x0 + w * 0.75, y0 + h * 0.8]
        if kind == "smiley":
            draw.arc(mouth, 20, 160, fill=(20, 20, 20), width=line + 1)
        else:
            frown = [mouth[0], mouth[1] + h * 0.2, mouth[2], mouth[3] + h * 0.2]
            draw.arc(frown, 200, 340, fill=(20, 20, 20), width=line + 1)
            tr = max(1, w // 14)
            tx, ty = x0 + w * 0.3, y0 + h * 0.5
            draw.ellipse([tx - tr, ty - tr, tx + tr, ty + 2 * tr], fill=(120, 190, 240))
    elif kind == "storm_cloud":
        grey = _jitter(rng, (65, 65, 75), 10)
        for fx, fy, fr in ((0.3, 0.35, 0.22), (0.55, 0.3, 0.26), (0.72, 0.4, 0.2), (0.5, 0.45, 0.25)):
            puff = [x0 + w * (fx - fr), y0 + h * (fy - fr * 0.8), x0 + w * (fx + fr), y0 + h * (fy + fr * 0.8)]
            draw.ellipse(puff, fill=grey)
        for k in range(4):  # rain
            rx = x0 + w * (0.25 + 0.17 * k)
            draw.line([(rx, y0 + h * 0.68), (rx - w * 0.08, y0 + h * 0.95)], fill=(90, 110, 150), width=line)
    elif kind == "square":
        side = min(w, h) * 0.8
        draw.rectangle(
            [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], fill=_jitter(rng, (150, 150, 155), 12)
        )
    elif kind == "rectangle":
        draw.rectangle([x0, cy - h * 0.25, x1, cy + h * 0.25], fill=_jitter(rng, (70, 130, 180), 12))
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=_jitter(rng, (112, 128, 144), 12))
    else:  # pragma: no cover - the kinds are the keys of IMAGE_OBJECTS
        raise ValueError(kind)


def _draw_distractor(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple, size: int
) -> None:
    x0, y0, x1, y1 = box
    line = max(1, size // 40)
    if kind == "dot":
        draw.ellipse(box, fill=colour)
    elif kind == "bar":
        draw.rectangle(
            [x0, (y0 + y1) / 2 - max(1, (y1 - y0) / 5), x1, (y0 + y1) / 2 + max(1, (y1 - y0) / 5)], fill=colour
        )
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=line)
    else:  # cross
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=line)
        draw.line([(x0, y1), (x1, y0)], fill=colour, width=line)


def _block_noise(rng: Rng, size: int, block: int, std: float) -> np.ndarray:
    n_blocks = -(-size // block)
    coarse = rng.normal(0.0, std, size=(n_blocks, n_blocks, 3)).astype(np.float32)
    return np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:size, :size]


def draw_image(rng: Rng, sentiment: str, size: int) -> tuple[bytes, str, dict[str, Any]]:
    """A PNG whose main object carries ``sentiment``; returns (png bytes, description, meta)."""
    bg_name = _pick(rng, tuple(BACKGROUNDS))
    base = np.array(_jitter(rng, BACKGROUNDS[bg_name], 12), dtype=np.float32)
    # Blotchy background (noise at two coarse scales, upsampled) so colour statistics vary
    # per picture. Block noise rather than per-pixel noise keeps PNG encoding fast and small.
    texture = _block_noise(rng, size, max(1, size // 8), 14.0) + _block_noise(rng, size, max(1, size // 16), 6.0)
    img = Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)

    shapes: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(0, 4))):  # distractors first: the main object stays whole
        kind, colour_name = _pick(rng, DISTRACTOR_KINDS), _pick(rng, tuple(DISTRACTOR_COLOURS))
        side = max(2, int(size * rng.uniform(0.08, 0.18)))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        _draw_distractor(draw, kind, box, DISTRACTOR_COLOURS[colour_name], size)
        shapes.append({"role": "distractor", "kind": kind, "colour": colour_name, "box": list(box)})

    kind = _pick(rng, tuple(IMAGE_OBJECTS[sentiment]))
    rel = float(rng.uniform(0.3, 0.55))
    side = max(4, int(size * rel))
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    box = (x0, y0, x0 + side, y0 + side)
    _draw_main(draw, rng, kind, box, size)
    shapes.append({"role": "main", "kind": kind, "sentiment": sentiment, "box": list(box)})

    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)

    cx, cy = (x0 + side / 2) / size, (y0 + side / 2) / size
    where = _POSITIONS[min(2, int(cy * 3))][min(2, int(cx * 3))]
    extent = "large" if rel >= 0.42 else "medium-sized"
    others = [s for s in shapes if s["role"] == "distractor"]
    if others:
        names = [f"{s['colour']} {s['kind']}" for s in others]  # no dedup: the count must match
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        around = f" next to {len(others)} small unrelated shape{'s' if len(others) > 1 else ''} ({listed})"
    else:
        around = ""
    description = (
        f"The image shows {IMAGE_OBJECTS[sentiment][kind]} ({extent}, {where}){around} "
        f"on a textured {bg_name} background; {IMAGE_MOODS[sentiment]}."
    )
    return buf.getvalue(), description, {"shapes": shapes, "background": bg_name}


# --------------------------------------------------------------------------- msc


def _msc_text(rng: Rng, sentiment: str) -> tuple[str, list[str], str]:
    """A tweet with the given text sentiment; returns (text, cue words, topic)."""
    topic = _pick(rng, TOPICS)
    slots = {"topic": topic, "time": _pick(rng, TIMES), "filler": _pick(rng, FILLERS), "tag": _pick(rng, TAGS)}
    if sentiment == "neutral":
        template = _pick(rng, NEUTRAL_TEMPLATES)
        slots["adj"], slots["adj2"] = _pick_two(rng, NEUTRAL_WORDS)
    else:
        template = _pick(rng, POLAR_TEMPLATES)
        slots["adj"], slots["adj2"] = _pick_two(rng, SENTIMENT_ADJECTIVES[sentiment])
        slots["verb"] = _pick(rng, SENTIMENT_VERBS[sentiment])
    cues = [slots[k] for k in ("verb", "adj", "adj2") if "{" + k + "}" in template]
    return _tidy(template.format(**slots)), cues, topic


def _text_reading(sentiment: str, cues: list[str], about: str) -> str:
    if sentiment == "neutral":
        return (
            f"The text reports on {about} in objective words ({_quote(cues)}) and has no sentiment "
            f"words; read alone it is neutral."
        )
    plural = "s" if len(set(cues)) > 1 else ""
    return f"The text uses the {sentiment} word{plural} {_quote(cues)} about {about}; read alone it is {sentiment}."


_RULE_SENTENCES = {
    "agree": "Text and image agree ({t}), so there is no conflict to resolve.",
    "polar_over_neutral": (
        "The text is {t} and the image is {i}; the polar modality carries the sentiment, so the post is {label}."
    ),
    "irony": (
        "The text is positive but the image is negative: cheerful words over a gloomy picture read as "
        "irony or sarcasm, so the post is negative."
    ),
    "complaint_stands": (
        "The text is negative but the image is positive: a cheerful picture does not cancel "
        "the complaint in the words, so the post is negative."
    ),
}


def _msc_sample(rng: Rng, image_size: int) -> dict[str, Any]:
    if rng.random() < MSC_CONFLICT_SHARE:
        t, i = _pick(rng, [(a, b) for a in SENTIMENT_LABELS for b in SENTIMENT_LABELS if a != b])
    else:
        t = i = _pick(rng, SENTIMENT_LABELS)
    label, rule = fuse(t, i)
    text, cues, topic = _msc_text(rng, t)
    image, image_desc, image_meta = draw_image(rng, i, image_size)
    chain = format_chain(
        {
            "Text_analysis": _text_reading(t, cues, f"the {topic}"),
            "Image_analysis": image_desc,
            "Conflict_resolution": _RULE_SENTENCES[rule].format(t=t, i=i, label=label),
            "Final_conclusion": f"Overall the post expresses a {label} sentiment.",
            "Prediction": label,
        }
    )
    meta = {
        "text_sentiment": t,
        "image_sentiment": i,
        "conflict": t != i,
        "rule": rule,
        "cue_words": cues,
        **image_meta,
    }
    return {"text": text, "image": image, "label": label, "gold_chain": chain, "meta": meta}


# --------------------------------------------------------------------------- masc / mabsa


def _aspect_post(rng: Rng, image_size: int, n_aspects: int) -> dict[str, Any]:
    """A post about ``n_aspects`` (0-2) aspects, as tokens with spans; the image shows the main aspect's mood."""
    main_sentiment = _pick(rng, SENTIMENT_LABELS)
    terms = list(_pick_two(rng, ASPECTS))[:n_aspects]
    slots = {"time": _pick(rng, TIMES), "topic": _pick(rng, TOPICS)}
    words: list[str] = []
    aspects: list[dict[str, Any]] = []
    if n_aspects == 0:  # a post with no named aspect: generic words of the picture's sentiment
        text, cues, _ = _msc_text(rng, main_sentiment)
        words = text.split()
    for k, term in enumerate(terms):
        polarity = main_sentiment if k == 0 else _pick(rng, SENTIMENT_LABELS)
        # The main aspect is sometimes named without any sentiment word; then only the picture carries it.
        implicit = k == 0 and rng.random() < IMPLICIT_SHARE
        if implicit:
            clause, stance, cue = _pick(rng, IMPLICIT_CLAUSES), "neutral", None
        elif polarity == "neutral":
            clause, stance, cue = _pick(rng, ASPECT_CLAUSES["neutral"]), "neutral", _pick(rng, NEUTRAL_ASPECT_WORDS)
        else:
            clause, stance, cue = (
                _pick(rng, ASPECT_CLAUSES[polarity]),
                polarity,
                _pick(rng, SENTIMENT_ADJECTIVES[polarity]),
            )
        if k == 1:
            # From what the words show (the stance), never the hidden polarity: "but" after an
            # implicit main aspect must not tell a text-only model anything about it.
            words.append("but" if stance != aspects[0]["text_stance"] else _pick(rng, (",", "and", ".")))
        start = None
        clause_words = []
        for token in clause.split():
            if token == "{A}":
                start = len(words) + len(clause_words)
                clause_words.extend(term.split())
            else:
                clause_words.extend(token.format(cue=cue, **slots).split())
        words.extend(clause_words)
        aspects.append(
            {
                "term": term,
                "start": start,
                "end": start + len(term.split()),
                "polarity": polarity,
                "text_stance": stance,
                "cue": cue,
                "implicit": implicit,
                "clause": " ".join(clause_words),
            }
        )
    tag = _pick(rng, TAGS)
    if tag:
        words.append(tag)
    image, image_desc, image_meta = draw_image(rng, main_sentiment, image_size)
    return {
        "words": words,
        "aspects": aspects,
        "image": image,
        "image_desc": image_desc,
        "image_sentiment": main_sentiment,
        "image_meta": image_meta,
    }


def _aspect_text_reading(aspect: dict[str, Any]) -> str:
    term = aspect["term"]
    if aspect["implicit"]:
        return f"The text names '{term}' ('{aspect['clause']}') without any sentiment word: neutral toward it."
    if aspect["polarity"] == "neutral":
        return (
            f"Next to '{term}' the text uses the objective word '{aspect['cue']}' ('{aspect['clause']}'): "
            "neutral toward it."
        )
    return f"Next to '{term}' the text says '{aspect['cue']}' ('{aspect['clause']}'): {aspect['polarity']} toward it."


def post_text_reading(aspects: Sequence[dict[str, Any]]) -> str:
    """LRSA's text explanation of an aspect post: per aspect, in text order, the word that
    carries its sentiment and the stance the words take (``aspects`` as in a row's ``meta``).
    Short, so that a tiny teacher can learn to write it: it must copy the names and words."""
    if not aspects:
        return "The text names no person, place or product."
    parts = []
    for a in aspects:
        if a["cue"] is None:
            parts.append(f"'{a['term']}' comes with no sentiment word: neutral.")
        else:
            parts.append(f"'{a['term']}' comes with '{a['cue']}': {a['text_stance']}.")
    return " ".join(parts)


def aspect_rationales(row: dict[str, Any]) -> dict[str, str]:
    """LRSA's two rationales as a perfect teacher would write them for a masc / mabsa row: the
    post-level text explanation and the picture's description (what the demo teacher is fitted
    to write; also an oracle for tests and ablations)."""
    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else row["meta"]
    return {
        "text_explanation": post_text_reading(meta["aspects"]),
        "image_description": parse_chain(row["gold_chain"])["Image_analysis"],
    }


def _aspect_resolution(post: dict[str, Any], k: int) -> tuple[str, str]:
    """(sentence, rule) explaining how aspect k's label follows from text and image."""
    aspect, image_s = post["aspects"][k], post["image_sentiment"]
    label, term = aspect["polarity"], aspect["term"]
    if k == 0:
        if aspect["implicit"] and image_s == "neutral":
            return (
                f"The text names '{term}' without any sentiment word and the image, which goes with this main "
                f"subject of the post, carries no emotion either, so the attitude is neutral."
            ), "agree"
        if aspect["implicit"]:
            return (
                f"The text is neutral toward '{term}' while the image, which goes with this main subject of the post, "
                f"is {image_s}; the polar modality carries the sentiment, so the attitude is {label}."
            ), "polar_over_neutral"
        return f"Text and image agree ({label}) about '{term}', the main subject of the post.", "agree"
    main = post["aspects"][0]["term"]
    if image_s == label:
        return f"The words next to '{term}' and the image mood agree ({label}).", "agree"
    return (
        f"The image mood ({image_s}) goes with the main subject '{main}', not with '{term}'; the words next to "
        f"'{term}' decide, so the attitude is {label}."
    ), "aspect_text"


def _masc_rows(rng: Rng, image_size: int, max_rows: int) -> list[dict[str, Any]]:
    n_aspects = min(max_rows, 1 + int(rng.random() < 0.5))
    post = _aspect_post(rng, image_size, n_aspects)
    readings = [_aspect_text_reading(a) for a in post["aspects"]]
    rows = []
    for k, aspect in enumerate(post["aspects"]):
        others = [r for j, r in enumerate(readings) if j != k]
        resolution, rule = _aspect_resolution(post, k)
        chain = format_chain(
            {
                "Text_analysis": " ".join([readings[k]] + [f"(Other aspect) {r}" for r in others]),
                "Image_analysis": post["image_desc"],
                "Conflict_resolution": resolution,
                "Final_conclusion": f"The poster's attitude toward '{aspect['term']}' is {aspect['polarity']}.",
                "Prediction": aspect["polarity"],
            }
        )
        meta = {
            "target": k,
            "main_aspect": post["aspects"][0]["term"],
            "aspects": post["aspects"],
            "image_sentiment": post["image_sentiment"],
            "text_sentiment": aspect["text_stance"],
            "conflict": aspect["text_stance"] != post["image_sentiment"],
            "rule": rule,
            **post["image_meta"],
        }
        rows.append(
            {
                "text": " ".join(post["words"]),
                "aspect": aspect["term"],
                "image": post["image"],
                "label": aspect["polarity"],
                "gold_chain": chain,
                "meta": meta,
            }
        )
    return rows


def _mabsa_sample(rng: Rng, image_size: int) -> dict[str, Any]:
    # A few posts name no aspect at all (empty spans), as in real JMASA data.
    n_aspects = 0 if rng.random() < 0.05 else 1 + int(rng.random() < 0.5)
    post = _aspect_post(rng, image_size, n_aspects)
    spans = [{"start": a["start"], "end": a["end"], "polarity": a["polarity"]} for a in post["aspects"]]
    if post["aspects"]:
        text_analysis = " ".join(_aspect_text_reading(a) for a in post["aspects"])
        resolution = " ".join(_aspect_resolution(post, k)[0] for k in range(len(post["aspects"])))
        conclusion = (
            "Aspects and sentiments: " + "; ".join(f"'{a['term']}' {a['polarity']}" for a in post["aspects"]) + "."
        )
        prediction = post["aspects"][0]["polarity"]
    else:
        text_analysis = "The text names no person, place or product, so there is no aspect to analyse."
        resolution = "With no aspect there is nothing to resolve between text and image."
        conclusion = "No aspect is mentioned, so no aspect-level sentiment is expressed."
        prediction = "neutral"
    chain = format_chain(
        {
            "Text_analysis": text_analysis,
            "Image_analysis": post["image_desc"],
            "Conflict_resolution": resolution,
            "Final_conclusion": conclusion,
            "Prediction": prediction,
        }
    )
    meta = {"aspects": post["aspects"], "image_sentiment": post["image_sentiment"], **post["image_meta"]}
    return {
        "text": " ".join(post["words"]),
        "words": post["words"],
        "spans": spans,
        "image": post["image"],
        "label": None,
        "gold_chain": chain,
        "meta": meta,
    }


# --------------------------------------------------------------------------- msa


def _score_label(score: float) -> str:
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def _msa_tier(score: float) -> int:
    return sum(abs(score) > edge for edge in MSA_TIER_EDGES)


def _msa_features(rng: Rng, score: float) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Audio (T_a x 20) and vision (T_v x 12) sequences that encode ``score``.

    Audio dims 0-1: a pitch oscillation whose amplitude grows with |score| and whose
    frequency grows with the score; dims 2-3: energy offset 0.4 * score. Vision dims 0-1:
    a smile offset 0.35 * score; dim 2: a trend whose slope is 0.8 * score. On top of
    every dim: a per-clip baseline (std 0.5) and per-frame Gaussian noise (std 1).
    """
    t_a = int(rng.integers(AUDIO_LEN[0], AUDIO_LEN[1] + 1))
    t_v = int(rng.integers(VISION_LEN[0], VISION_LEN[1] + 1))
    amp, freq = 0.3 + 0.3 * abs(score), 1.5 + 0.5 * (score + 3.0)  # cycles over the clip
    phase = float(rng.uniform(0, 2 * math.pi))
    ta = np.arange(t_a) / t_a
    # A per-clip baseline (speaker / camera differences) blurs the offsets, as in real data.
    audio = rng.normal(0.0, 1.0, size=(t_a, AUDIO_DIM)) + rng.normal(0.0, 0.5, size=AUDIO_DIM)
    audio[:, 0] += amp * np.sin(2 * math.pi * freq * ta + phase)
    audio[:, 1] += amp * np.cos(2 * math.pi * freq * ta + phase)
    audio[:, 2:4] += 0.4 * score
    tv = np.arange(t_v) / max(1, t_v - 1) - 0.5
    vision = rng.normal(0.0, 1.0, size=(t_v, VISION_DIM)) + rng.normal(0.0, 0.5, size=VISION_DIM)
    vision[:, 0:2] += 0.35 * score
    vision[:, 2] += 0.8 * score * tv
    return (
        audio,
        vision,
        {
            "amplitude": amp,
            "frequency": freq,
            "energy_offset": 0.4 * score,
            "smile_offset": 0.35 * score,
            "trend_slope": 0.8 * score,
        },
    )


def _msa_signal_reading(score: float) -> str:
    if score == 0:
        return (
            "No image. Audio: a small pitch oscillation at a neutral pace and energy at the baseline; vision: "
            "smile features at the baseline with no trend; both are neutral."
        )
    sign = "positive" if score > 0 else "negative"
    amp = "large" if abs(score) >= 1.5 else "small"
    pace, energy = ("faster", "above") if score > 0 else ("slower", "below")
    smile, trend = ("raised", "rising") if score > 0 else ("lowered", "falling")
    return (
        f"No image. Audio: a {amp} pitch oscillation, {pace} than a neutral voice, and energy {energy} the "
        f"baseline; vision: smile features {smile} and {trend} over the clip; both point to a {sign} sentiment of "
        f"{MSA_TIER_NAMES[_msa_tier(score)]} intensity."
    )


def _msa_sample(rng: Rng) -> dict[str, Any]:
    if rng.random() < MSA_ZERO_SHARE:
        score = 0.0
    else:
        score = round(float(rng.uniform(-3.0, 3.0)), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    label = _score_label(score)
    flat = score != 0 and rng.random() < MSA_FLAT_TEXT_SHARE
    if score == 0 or flat:
        text = _pick(rng, MSA_NEUTRAL_TEMPLATES).format(subject=_pick(rng, MSA_SUBJECTS))
        cues: list[str] = []
        text_reading = "The text only describes the film, with no opinion words: neutral."
    else:
        tier = _msa_tier(score)
        w, w2 = _pick_two(rng, MSA_INTENSITY_WORDS[label][tier])
        template = _pick(rng, MSA_POLAR_TEMPLATES)
        text = template.format(w=w, w2=w2)
        cues = [w, w2] if "{w2}" in template else [w]
        text_reading = f"The words {_quote(cues)} are {label} with {MSA_TIER_NAMES[tier]} intensity."
    audio, vision, signal = _msa_features(rng, score)
    if score == 0:
        resolution = "Text, audio and vision are all neutral; nothing conflicts."
    elif flat:
        resolution = (
            f"The text is neutral, but the voice and face are {label}; the non-verbal cues carry the sentiment."
        )
    else:
        resolution = f"Text, audio and vision agree: {label}."
    chain = format_chain(
        {
            "Text_analysis": text_reading,
            "Image_analysis": _msa_signal_reading(score),
            "Conflict_resolution": resolution,
            "Final_conclusion": f"The speaker's sentiment is {label}, about {score:+.1f} on the -3 to 3 scale.",
            "Prediction": label,
        }
    )
    meta = {
        "score": score,
        "flat_text": flat,
        "cue_words": cues,
        "audio_len": len(audio),
        "vision_len": len(vision),
        "signal": {k: round(v, 4) for k, v in signal.items()},
        "conflict": flat,
    }
    return {
        "text": text,
        "audio": _floats(audio),
        "vision": _floats(vision),
        "label": label,
        "score": score,
        "gold_chain": chain,
        "meta": meta,
    }


# --------------------------------------------------------------------------- erc


def _erc_features(rng: Rng, emotion: str, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Audio / vision sequences for ``emotion`` (see :data:`EMOTION_SIGNALS`).

    Audio: dims 0-1 a pitch oscillation (amplitude and speed grow with arousal), dim 2
    energy (arousal), dim 3 pitch level (valence), dims 4-10 a voice-quality signature,
    one dim per emotion. Vision: dim 0 smile (valence), dim 1 movement (arousal), dims
    2-8 a facial signature, one dim per emotion. ``strength`` in [0.5, 1] scales all of it.
    """
    arousal, valence = EMOTION_SIGNALS[emotion]
    idx = EMOTION_LABELS.index(emotion)
    t_a = int(rng.integers(AUDIO_LEN[0], AUDIO_LEN[1] + 1))
    t_v = int(rng.integers(VISION_LEN[0], VISION_LEN[1] + 1))
    ta = np.arange(t_a) / t_a
    amp, freq = strength * (0.5 + 0.4 * arousal), 2.5 + 1.5 * arousal
    phase = float(rng.uniform(0, 2 * math.pi))
    audio = rng.normal(0.0, 0.8, size=(t_a, AUDIO_DIM))
    audio[:, 0] += amp * np.sin(2 * math.pi * freq * ta + phase)
    audio[:, 1] += amp * np.cos(2 * math.pi * freq * ta + phase)
    audio[:, 2] += strength * 0.6 * arousal
    audio[:, 3] += strength * 0.5 * valence
    audio[:, 4 + idx] += strength * 0.5
    vision = rng.normal(0.0, 0.8, size=(t_v, VISION_DIM))
    vision[:, 0] += strength * 0.6 * valence
    vision[:, 1] += strength * 0.5 * arousal
    vision[:, 2 + idx] += strength * 0.4
    return audio, vision


def _erc_signal_reading(emotion: str) -> str:
    arousal, valence = EMOTION_SIGNALS[emotion]
    voice = "loud, fast-moving pitch" if arousal > 0.3 else "quiet, slow pitch" if arousal < -0.3 else "moderate energy"
    tone = "a bright tone" if valence > 0.3 else "a dark tone" if valence < -0.3 else "a level tone"
    face = "smiling" if valence > 0.3 else "frowning" if valence < -0.3 else "a relaxed face"
    moves = "animated movement" if arousal > 0.3 else "little movement" if arousal < -0.3 else "some movement"
    return (
        f"No image. Audio: {voice} with {tone} and the voice signature of {emotion}; vision: {face}, {moves}, "
        f"and the facial signature of {emotion}."
    )


def _erc_sentiment(rng: Rng, emotion: str) -> str:
    if emotion == "neutral":
        return "neutral"
    if emotion == "joy":
        return "positive"
    if emotion == "surprise":  # MELD annotates surprise either way
        return _pick(rng, ("positive", "negative"))
    return "negative"


def _erc_rows(rng: Rng, max_rows: int, dialogue_id: int) -> list[dict[str, Any]]:
    n = min(max_rows, int(rng.integers(2, 9)))
    speakers = list(rng.choice(len(SPEAKERS), size=int(rng.integers(2, 4)), replace=False))
    emotions = list(EMOTION_WEIGHTS)
    weights = np.array([EMOTION_WEIGHTS[e] for e in emotions])
    rows = []
    for u in range(n):
        emotion = emotions[int(rng.choice(len(emotions), p=weights / weights.sum()))]
        speaker = SPEAKERS[int(speakers[u % len(speakers)])]
        sent = _pick(rng, NEUTRAL_UTTERANCES).format(
            obj=_pick(rng, ERC_OBJECTS), place=_pick(rng, ERC_PLACES), time=_pick(rng, TIMES)
        )
        flat = emotion != "neutral" and rng.random() < ERC_FLAT_TEXT_SHARE
        if emotion == "neutral" or flat:
            text, cue = sent, None
            text_reading = f"{speaker}'s words are a plain, matter-of-fact statement with no emotion word: neutral."
        else:
            cue = _pick(rng, EMOTION_WORDS[emotion])
            text = _pick(rng, EMOTION_TEMPLATES).format(cue=cue, sent=sent)
            text_reading = f"{speaker}'s words contain '{cue}', a cue of {emotion}."
        strength = float(rng.uniform(0.5, 1.0))
        audio, vision = _erc_features(rng, emotion, strength)
        if emotion == "neutral":
            resolution = "Words, voice and face are all calm and neutral; nothing conflicts."
        elif flat:
            resolution = f"The words are flat, but the voice and face show {emotion}; the non-verbal cues decide."
        else:
            resolution = f"Words, voice and face agree on {emotion}."
        chain = format_chain(
            {
                "Text_analysis": text_reading,
                "Image_analysis": _erc_signal_reading(emotion),
                "Conflict_resolution": resolution,
                "Final_conclusion": f"{speaker}'s emotion in this utterance is {emotion}.",
                "Prediction": emotion,
            }
        )
        meta = {
            "speaker": speaker,
            "dialogue_id": dialogue_id,
            "utterance_id": u,
            "emotion": emotion,
            "sentiment": _erc_sentiment(rng, emotion),
            "cue_word": cue,
            "flat_text": flat,
            "conflict": flat,
            "strength": round(strength, 4),
        }
        rows.append(
            {
                "text": _tidy(text),
                "audio": _floats(audio),
                "vision": _floats(vision),
                "label": emotion,
                "gold_chain": chain,
                "meta": meta,
            }
        )
    return rows


# --------------------------------------------------------------------------- driver


def generate(
    task: str, size: int, seed: int = 0, image_size: int = 64, split_ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> PreparedDataset:
    """A synthetic data set of ``size`` rows over train/dev/test for ``task``.

    Rows of one post (masc) or one dialogue (erc) never straddle two splits. The same
    arguments give byte-identical rows (images included).
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {TASKS}")
    if int(size) != size or size < 1:
        raise DataError(f"size must be a positive integer, got {size!r}")
    if image_size < 8:
        raise DataError(f"image_size must be at least 8, got {image_size}")
    counts = split_counts(int(size), split_ratios)
    # One stream per (seed, task): tasks generated with the same seed are still independent.
    rng = np.random.default_rng([int(seed), TASKS.index(task)])
    group = 0  # post / dialogue counter, kept in meta to group rows
    make: Callable[[int], list[dict[str, Any]]] = {
        "msc": lambda left: [_msc_sample(rng, image_size)],
        "masc": lambda left: _masc_rows(rng, image_size, left),
        "mabsa": lambda left: [_mabsa_sample(rng, image_size)],
        "msa": lambda left: [_msa_sample(rng)],
        "erc": lambda left: _erc_rows(rng, left, group),
    }[task]
    splits: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rows: list[dict[str, Any]] = []
        while len(rows) < counts[split]:
            for values in make(counts[split] - len(rows)):
                meta = values.pop("meta")
                meta["group"] = group
                rows.append(
                    canonical_row(
                        id=f"synthetic-{task}-{split}-{len(rows):06d}",
                        task=task,
                        source=SOURCE,
                        meta=json.dumps(meta, sort_keys=True),
                        **values,
                    )
                )
            group += 1
        splits[split] = rows
    notes = {
        "generator": "sentiray.data.synthetic",
        "seed": int(seed),
        "image_size": image_size,
        "split_ratios": list(split_ratios),
    }
    if task == "msc":
        notes["fusion_rule"] = FUSION_RULE
        notes["conflicting_posts"] = sum('"conflict": true' in r["meta"] for rows in splits.values() for r in rows)
    return PreparedDataset(source=SOURCE, task=task, splits=splits, notes=notes)
