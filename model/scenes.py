"""Seeded synthetic scenes: images of 1 to 4 shapes, their canonical captions, and questions about them.

A scene is a list of objects (shape, colour, size, position). Objects stand in distinct columns, so
"left to right" is never ambiguous; their vertical position is free. The image is drawn at twice its
size and downsampled (anti-aliased edges), on a lightly tinted gradient background with pixel noise and
small colour jitter, so that the task is not a lookup of exact pixel values.

Everything is a pure function of the seed: `make_scene(seed)` gives the same scene on every machine.
Training draws seeds below `HELD_OUT_SEED_START`; evaluation uses seeds from it on, which
training never touches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SIZES = {"small": 0.15, "large": 0.25}  # object extent as a fraction of the image side
NUMBERS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4
IMAGE_SIZE = 64

HELD_OUT_SEED_START = 10_000_000  # evaluation seeds; training seeds stay below
QUESTION_FAMILIES = ("count", "colour", "shape", "exists", "position")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # ordered left to right
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient from top to bottom
    seed: int

    @property
    def caption(self) -> str:
        phrases = [o.phrase for o in self.objects]
        if len(phrases) == 1:
            return phrases[0]
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]


@dataclass(frozen=True)
class Question:
    family: str
    text: str
    answer: str
    # what the decoder writes before the answer, if anything (see `ask`); the answer alone is what counts
    scratchpad: str = ""

    @property
    def names_three_words(self) -> bool:
        """A position question that names an object by size, colour and shape ("is the large red circle left
        of ...?"): the grammar's hardest, asked only of scenes where two objects differ in size alone."""
        return self.family == "position" and any(word in SIZES for word in self.text.split())


def make_scene(seed: int, min_objects: int = 1, max_objects: int = MAX_OBJECTS) -> Scene:
    """The scene of `seed`: its objects in distinct columns, left to right."""
    rng = random.Random(seed)
    count = rng.randint(min_objects, max_objects)
    columns = sorted(rng.sample(range(MAX_OBJECTS), count))
    objects = []
    for column in columns:
        size = rng.choice(tuple(SIZES))
        half = SIZES[size] / 2
        slot = 1.0 / MAX_OBJECTS
        slack = max(0.0, slot / 2 - half - 0.01)
        x = (column + 0.5) * slot + rng.uniform(-slack, slack)
        y = rng.uniform(half + 0.03, 1 - half - 0.03)
        objects.append(SceneObject(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), size, x, y))
    top = tuple(rng.randint(200, 255) for _ in range(3))
    bottom = tuple(min(255, max(180, c + rng.randint(-30, 30))) for c in top)
    return Scene(tuple(objects), (top, bottom), seed)  # type: ignore[arg-type]


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene as an RGB image of `size`×`size` pixels (deterministic in the seed)."""
    rng = np.random.default_rng(scene.seed)
    big = size * 2
    top, bottom = (np.array(c, dtype=np.float32) for c in scene.background)
    ramp = np.linspace(0.0, 1.0, big, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (big, big, 3))
    image = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter, strict=True))
        cx, cy, r = obj.x * big, obj.y * big, SIZES[obj.size] * big / 2
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            s = r * 0.9  # a square of the same extent looks larger than a circle
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def column_of(obj: SceneObject) -> int:
    """The column (0 to MAX_OBJECTS - 1, left to right) the object stands in; no two objects share one."""
    return min(MAX_OBJECTS - 1, int(obj.x * MAX_OBJECTS))


def _unique_reference(scene: Scene, obj: SceneObject) -> str | None:
    """The shortest noun phrase that picks out `obj` alone ("circle", "red circle", ...), if any."""
    candidates = (
        (obj.shape, lambda o: o.shape == obj.shape),
        (f"{obj.colour} {obj.shape}", lambda o: (o.colour, o.shape) == (obj.colour, obj.shape)),
        (f"{obj.size} {obj.colour} {obj.shape}", lambda o: o.phrase == obj.phrase),
    )
    for words, matches in candidates:
        if sum(1 for o in scene.objects if matches(o)) == 1:
            return words
    return None


def ask(scene: Scene, family: str, rng: random.Random) -> Question | None:
    """A question of `family` about `scene` with a one-word answer, or None if the scene allows none."""
    objs = scene.objects
    if family == "count":
        return Question(family, "how many shapes are there?", NUMBERS[len(objs)])
    if family == "colour":
        named = [(o, r) for o in objs if (r := _unique_reference(scene, o)) and r == o.shape]
        if not named:
            return None
        obj, ref = rng.choice(named)
        # scratchpad: the object's column first, the look-up that position questions learn too
        return Question(family, f"what colour is the {ref}?", obj.colour, NUMBERS[column_of(obj) + 1])
    if family == "shape":
        one_of_colour = [o for o in objs if sum(1 for p in objs if p.colour == o.colour) == 1]
        if not one_of_colour:
            return None
        obj = rng.choice(one_of_colour)
        return Question(family, f"what shape is the {obj.colour} one?", obj.shape)
    if family == "exists":
        if rng.random() < 0.5:
            obj = rng.choice(objs)
            colour, shape = obj.colour, obj.shape
        else:
            present = {(o.colour, o.shape) for o in objs}
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            colour, shape = rng.choice(absent)
        match = [o for o in objs if (o.colour, o.shape) == (colour, shape)]
        answer = "yes" if match else "no"
        # scratchpad: the matching object's column, or "zero" if there is none
        column = NUMBERS[column_of(match[0]) + 1] if match else NUMBERS[0]
        return Question(family, f"is there a {colour} {shape}?", answer, column)
    if family == "position":
        placed = [(i, r) for i, o in enumerate(objs) if (r := _unique_reference(scene, o))]
        if len(placed) < 2:
            return None
        (i, a), (j, b) = rng.sample(placed, 2)
        relation = rng.choice(("left", "right"))
        actual = "left" if i < j else "right"  # objects are ordered left to right
        # The scratchpad (for `--scratchpad` training) names each object's column ("one" to "four", left
        # to right), then the actual relation of the first to the second: "two four left". Each step is
        # then a first-order function of what precedes it; answered directly, yes/no is an XOR of the
        # objects' order and the asked relation, and stayed at chance (see model/MODEL_CARD.md).
        scratchpad = " ".join([*(NUMBERS[column_of(objs[k]) + 1] for k in (i, j)), actual])
        answer = "yes" if actual == relation else "no"
        return Question(family, f"is the {a} {relation} of the {b}?", answer, scratchpad)
    raise ValueError(f"unknown question family {family!r}")


def ask_any(
    scene: Scene,
    rng: random.Random,
    families: tuple[str, ...] = QUESTION_FAMILIES,
    weights: dict[str, float] | None = None,
) -> Question:
    """A question from a random family that the scene allows (count always does).

    Families are tried in a random order, uniform or, with `weights`, weighted (a family of weight 3 comes
    first three times as often as one of weight 1).
    """
    if weights is None:
        order = rng.sample(families, len(families))
    else:  # weighted sampling without replacement (Efraimidis and Spirakis)
        order = sorted(families, key=lambda f: rng.random() ** (1.0 / weights.get(f, 1.0)), reverse=True)
    for family in order:
        question = ask(scene, family, rng)
        if question is not None:
            return question
    return ask(scene, "count", rng)  # type: ignore[return-value]


def corpus() -> list[str]:
    """Every word the scene grammar can produce: captions, questions, answers (for the tokenizer)."""
    words = [*SHAPES, *COLOURS, *SIZES, *NUMBERS, "yes", "no", "a", "and", ",", "?", "the", "one"]
    templates = [
        "how many shapes are there?",
        "what colour is the red circle?",
        "what shape is the blue one?",
        "is there a green square?",
        "is the large red circle left of the triangle?",
        "is the diamond right of the square?",
    ]
    return [" ".join(words), *templates]
