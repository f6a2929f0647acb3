"""Which questions the built-in model knows: the grammar of the question families it was trained on.

The built-in decoder learnt five families of questions (`model.scenes.ask`), each a fixed template over the
scene vocabulary, and nothing else: a question outside them gets an answer from the vocabulary that means
nothing ("where is the square?" → ""), and an unfinished phrasing can leave its hidden scratchpad showing
("what colour is the circle" → "one one"). So a question is first normalised, which only changes what
cannot change its meaning (case, spacing, punctuation and the question mark, American spellings, a few
phrasings of the same question: "how many objects?" is "how many shapes are there?"), then matched against
the families' templates exactly:

    how many shapes are there?
    what colour is the <shape>?
    what shape is the <colour> one?
    is there a <colour> <shape>?
    is the <object> left of the <object>?   (or right of)

where an <object> is a shape, or a colour and a shape, or a size, a colour and a shape ("large red circle"),
as the trained questions name objects. Anything else is an `UnknownQuestion`, never a guess.

Serving imports this module, and never the scene generator (`model.scenes`, which draws): so the grammar's
words are spelt here, and a test checks that they are the scene generator's.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from model.api import UnknownQuestion

# The scene grammar's words (model.scenes: SHAPES, COLOURS, SIZES; tests/model/test_questions.py checks them).
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")

_SHAPE = "|".join(SHAPES)
_COLOUR = "|".join(COLOURS)
_SIZE = "|".join(SIZES)
_OBJECT = rf"(?:(?:(?:{_SIZE}) )?(?:{_COLOUR}) )?(?:{_SHAPE})"  # circle, red circle, large red circle

# Each family's template, on a normalised question (model.scenes.ask writes them).
FAMILIES: dict[str, re.Pattern[str]] = {
    "count": re.compile(r"how many shapes are there\?"),
    "colour": re.compile(rf"what colour is the (?:{_SHAPE})\?"),
    "shape": re.compile(rf"what shape is the (?:{_COLOUR}) one\?"),
    "exists": re.compile(rf"is there a (?:{_COLOUR}) (?:{_SHAPE})\?"),
    "position": re.compile(rf"is the {_OBJECT} (?:left|right) of the {_OBJECT}\?"),
}

# What a refusal tells the client (short): the forms, then the words that fill them.
KNOWN_FORMS = (
    "how many shapes are there?",
    "what colour is the <shape>?",
    "what shape is the <colour> one?",
    "is there a <colour> <shape>?",
    "is the <object> left of (or right of) the <object>?",
)
KNOWN_WORDS = (
    f"<shape>: {', '.join(SHAPES)}; <colour>: {', '.join(COLOURS)}; "
    f"<object>: a shape, a colour and a shape, or a size ({' or '.join(SIZES)}), a colour and a shape, "
    "e.g. 'large red circle'"
)
KNOWN = " | ".join(KNOWN_FORMS) + f" ({KNOWN_WORDS})"

# Spellings of the same word (the vocabulary is British).
_SPELLINGS = {"color": "colour", "colors": "colours", "an": "a"}
_CONTRACTIONS = {"what's": "what is", "whats": "what is", "there's": "there is"}
# Phrasings of the same question, rewritten to the trained one; applied in order, on the normalised words.
_REPHRASINGS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^(?:please )?(.*?)(?: please)?$", r"\1"),
        (r" (?:in|on) (?:the|this) (?:image|picture|photo|scene)$", ""),
        (r"^how many (?:shapes|objects|things|items)(?: are there)?$", "how many shapes are there"),
        (r"^(?:what|which) is the colour of the ", "what colour is the "),
        (r"^which colour is the ", "what colour is the "),
        (r"^which shape is the ", "what shape is the "),
        (rf"^what shape is the ({_COLOUR}) (?:shape|object|thing)$", r"what shape is the \1 one"),
        (r" (?:to|on) the (left|right) of the ", r" \1 of the "),
    )
)


@dataclass(frozen=True)
class KnownQuestion:
    """A question of a trained family, as the model was trained to read it."""

    family: str  # one of model.scenes.QUESTION_FAMILIES
    text: str  # normalised: the trained template's exact words


def normalise(question: str) -> str:
    """The question in the trained questions' spelling: lower case, single spaces, no punctuation but one
    final "?", British spellings, and the trained phrasing of a few equivalent ones. Idempotent."""
    text = unicodedata.normalize("NFKC", question).lower().replace("\u2019", "'")
    words = "".join(" " if _is_punctuation(c) else c for c in text).split()
    words = [_CONTRACTIONS.get(word, word).strip("'") for word in words]
    text = " ".join(_SPELLINGS.get(word, word) for word in " ".join(words).split())
    for pattern, replacement in _REPHRASINGS:
        text = pattern.sub(replacement, text)
    return f"{text}?" if text else ""


def _is_punctuation(character: str) -> bool:
    """Punctuation, symbols, spaces and control characters (an apostrophe is part of a word); letters of any
    script stay, so that a word the vocabulary lacks is never dropped into a known question."""
    return character != "'" and unicodedata.category(character)[0] in "PSZC"


def parse(question: str) -> KnownQuestion:
    """The question's family and trained text, or `UnknownQuestion` (its message lists the known forms)."""
    text = normalise(question)
    for family, template in FAMILIES.items():
        if template.fullmatch(text):
            return KnownQuestion(family, text)
    raise UnknownQuestion(question, KNOWN)


def understood(question: str) -> bool:
    """Whether the question, normalised, is one the built-in model knows."""
    try:
        parse(question)
    except UnknownQuestion:
        return False
    return True
