"""Audio the built-in model must not take for a scene sentence, for the `hearing` stage: it learns to write nothing.

Everyday speech that is not about a scene (random words of English, in espeak-ng's, generated and flite's voices,
sometimes with a scene word or two among them), speech in other languages' voices, noise, melodies and near-
silence; each clip a pure function of its seed, and its transcript the empty one. None of it is what
`model.refusal_eval` measures refusals on: that evaluation's English sentences are never spoken here (these
are random words), its French and German voices are never used, and its noise, melodies and silences come from
other seeds (`SEED_OFFSET`)."""

from __future__ import annotations

import random

import numpy as np

from model.speech_conditions import with_talkers
from model.train.everyday import everyday_text
from model.train.speech import (
    FLITE,
    FLITE_SHARE,
    FLITE_TRAIN_VOICES,
    OTHER_TRAIN_VOICES,
    TRAIN_ACCENTS,
    TRAIN_VARIANTS,
    Utterance,
    maybe_generated,
    synthesise,
)

# voices of other languages: they read random words as their language would. The same voices read scene
# sentences too (`OTHER_TRAIN_VOICES`), so that content, not a voice, is what is heard as nothing; French and
# German (the refusal evaluation's) and Dutch and Italian (the "other voices" evaluation's) are never heard.
FOREIGN_VOICES = OTHER_TRAIN_VOICES
SEED_OFFSET = 50_000_000  # apart from the evaluation's clips (model.refusal_eval uses seeds below 10,000)
KINDS = (
    ("english", 0.35),
    ("foreign", 0.25),
    ("noise", 0.12),
    ("melody", 0.12),
    ("near_silence", 0.08),
    ("talk", 0.08),
)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.standard_normal(n)
    colour = rng.integers(3)
    if colour == 0:
        return white
    walk = np.cumsum(white)  # brown; pink-ish: half brown, half white
    walk -= np.convolve(walk, np.ones(400) / 400, mode="same")
    walk /= max(1e-9, float(walk.std()))
    return walk if colour == 1 else (walk + white) / np.sqrt(2)


def _melody(rng: np.random.Generator, rate: int) -> np.ndarray:
    base = 110.0 * 2 ** rng.uniform(0, 3)
    scale = (0, 2, 3, 5, 7, 8, 10, 12) if rng.random() < 0.5 else (0, 2, 4, 7, 9, 12, 14, 16)
    notes = []
    for _ in range(int(rng.integers(4, 20))):
        frequency = base * 2 ** (float(rng.choice(scale)) / 12)
        t = np.arange(int(rng.uniform(0.1, 0.6) * rate)) / rate
        harmonics = int(rng.integers(1, 6))
        note = sum(np.sin(2 * np.pi * frequency * k * t) / k ** rng.uniform(0.5, 2) for k in range(1, harmonics + 1))
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
        notes.append(np.asarray(note) * fade)
    return np.concatenate(notes)


def clip(seed: int, rate: int) -> np.ndarray:
    """The out-of-domain clip of `seed` (float32 mono at `rate`, peak at most 1)."""
    rng = random.Random(SEED_OFFSET + seed)
    nprng = np.random.default_rng(SEED_OFFSET + seed)
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    level = 10 ** rng.uniform(-2.0, -0.1)
    other_kind = random.Random(SEED_OFFSET + seed * 19 + 7)  # its own draws: the other clips stay as they were
    generated = random.Random(SEED_OFFSET + seed * 23 + 9)

    def speech(voices: tuple[str, ...], flite: bool = False) -> np.ndarray:
        accent = maybe_generated(rng.choice(voices), generated)  # as scene sentences are
        voice = f"{accent}+{rng.choice(TRAIN_VARIANTS)}"
        if flite and other_kind.random() < FLITE_SHARE:  # flite's voices say everyday English words too
            voice = FLITE + other_kind.choice(FLITE_TRAIN_VOICES)
        u = Utterance(
            everyday_text(rng),
            voice,
            rng.randint(90, 280),
            rng.randint(0, 99),
            rng.uniform(-20.0, -1.0),
            rng.uniform(10.0, 40.0) if rng.random() < 0.4 else None,
            (rng.uniform(0, 0.4), rng.uniform(0, 0.4)),
        )
        return synthesise(u, rate, SEED_OFFSET + seed)

    if kind == "english":
        samples = speech(TRAIN_ACCENTS, flite=True)
    elif kind == "foreign":
        samples = speech(FOREIGN_VOICES)
    elif kind == "talk":  # several people talking at once, none louder
        samples = with_talkers(
            speech(TRAIN_ACCENTS, flite=True), [speech(FOREIGN_VOICES + TRAIN_ACCENTS)], rng.uniform(-3, 3)
        )
    else:
        n = int(rng.uniform(0.5, 6.0) * rate)
        if kind == "noise":
            samples = level * _noise(nprng, n) / 3
        elif kind == "melody":
            samples = level * _melody(nprng, rate) / 2.5
        else:
            samples = 10 ** rng.uniform(-4.5, -2.5) * _noise(nprng, n)
    out: np.ndarray = np.clip(samples, -1.0, 1.0).astype(np.float32)
    return out
