"""How often spoken questions are refused: in-domain questions (to keep) against out-of-domain audio (to refuse).

In-domain: held-out scene questions (`model.train.speech.eval_utterances`: sentences training never
spoke) in held-out voices (accents and variants training never heard). Out-of-domain, by category:
everyday English sentences that are not about a scene ("please book a table for two at seven"), French and
German speech (espeak-ng's `fr` and `de` voices), white noise, melodies (synthesised tones with
harmonics) and near-silence. Every clip is a pure function of its index. Each is transcribed with its
confidence (`transcribe_scored`, the built-in model's; others report no `avg_logprob`), its
`no_speech_prob` measured by the voice-activity detector, and refused when one of `criteria` says so
(`model.understanding`): the share refused per category is what `refusal_rates` returns.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from model.api import MultimodalModel, RescoresHeard, ScoredTranscriber
from model.understanding import Criterion, Heard, refusal
from model.vad import SAMPLING_RATE, no_speech_in

ENGLISH = (
    "please book a table for two at seven",
    "what time does the train to london leave",
    "can you turn the music down a little",
    "i would like a cup of coffee with milk",
    "where did you put the keys to the car",
    "the meeting has been moved to thursday afternoon",
    "remind me to call my mother tomorrow",
    "how much does this jacket cost",
    "is it going to rain this weekend",
    "my flight was delayed by three hours",
    "could you send me the report by friday",
    "let's meet outside the cinema at eight",
    "the children are playing in the garden",
    "what is the capital of australia",
    "please close the window it is cold",
    "how do i get to the nearest pharmacy",
    "thank you very much for your help",
    "i forgot my password again",
    "set an alarm for half past six",
    "which bus goes to the airport",
    "do you have any vegetarian dishes",
)
FRENCH = (
    "bonjour, comment allez-vous aujourd'hui",
    "je voudrais réserver une table pour deux personnes",
    "où se trouve la gare la plus proche",
    "il fait très beau ce matin",
    "quelle est la couleur du cercle",
    "le chat dort sur le canapé",
    "pouvez-vous répéter la question s'il vous plaît",
    "nous partons en vacances la semaine prochaine",
    "combien coûte ce livre",
    "j'aime beaucoup la musique classique",
)
GERMAN = (
    "guten morgen, wie geht es ihnen",
    "ich möchte einen tisch für zwei personen reservieren",
    "wo ist der nächste bahnhof",
    "das wetter ist heute sehr schön",
    "welche farbe hat der kreis",
    "der hund spielt im garten",
    "können sie das bitte wiederholen",
    "wir fahren nächste woche in den urlaub",
    "wie viel kostet dieses buch",
    "ich höre gern klassische musik",
)
OUT_OF_DOMAIN = ("english", "french", "german", "noise", "melody", "near_silence")
CLIPS_PER_CATEGORY = 40  # out-of-domain clips of each category (sentences come back in other voices)


def in_domain_clips(n: int = 300) -> list[np.ndarray]:
    """`n` held-out scene questions, each in a held-out voice."""
    from model.train.speech import eval_utterances, synthesise

    utterances = [u for u in eval_utterances(True, 2 * n) if u.text.endswith("?")][:n]
    return [synthesise(u, SAMPLING_RATE, i) for i, u in enumerate(utterances)]


def spoken(texts: Sequence[str], accents: Sequence[str], n: int, first_seed: int = 9_000) -> list[np.ndarray]:
    """`n` clips of `texts` in turn, each in a voice of `accents` and a variant, at a speed and pitch of its own
    (clip i drawn from seed `first_seed` + i)."""
    from model.train.speech import Utterance, synthesise

    clips = []
    for i in range(n):
        rng = random.Random(first_seed + i)
        variant = rng.choice(("m1", "m3", "f2", "f4", "m7"))
        u = Utterance(
            texts[i % len(texts)],
            f"{rng.choice(accents)}+{variant}",
            rng.randint(130, 210),
            rng.randint(25, 75),
            rng.uniform(-20.0, -1.0),
            None,
            (rng.uniform(0, 0.4), rng.uniform(0, 0.4)),
        )
        clips.append(synthesise(replace(u), SAMPLING_RATE, i))
    return clips


def noise(i: int) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    seconds, level = rng.uniform(1.0, 5.0), 10 ** rng.uniform(-2.0, -0.5)
    return (level * rng.standard_normal(int(seconds * SAMPLING_RATE))).clip(-1, 1).astype(np.float32)


def melody(i: int) -> np.ndarray:
    """Notes of a pentatonic scale, 0.15-0.5 s each, with two harmonics and a short fade (2-6 s)."""
    rng = np.random.default_rng(200 + i)
    notes = []
    for _ in range(int(rng.integers(5, 16))):
        frequency = 220.0 * 2 ** (float(rng.choice([0, 2, 4, 7, 9, 12, 14, 16])) / 12)
        t = np.arange(int(rng.uniform(0.15, 0.5) * SAMPLING_RATE)) / SAMPLING_RATE
        note = sum(np.sin(2 * np.pi * frequency * k * t) / k for k in (1, 2, 3))
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
        notes.append(note * fade)
    level = 10 ** rng.uniform(-1.5, -0.3)
    return (level * np.concatenate(notes) / 1.9).astype(np.float32)


def near_silence(i: int) -> np.ndarray:
    """A faint hiss (-80 to -50 dB of full scale), 1-4 s."""
    rng = np.random.default_rng(300 + i)
    seconds, level = rng.uniform(1.0, 4.0), 10 ** rng.uniform(-4.0, -2.5)
    return (level * rng.standard_normal(int(seconds * SAMPLING_RATE))).astype(np.float32)


def out_of_domain_clips(category: str, n: int = CLIPS_PER_CATEGORY) -> list[np.ndarray]:
    makers: dict[str, Callable[[], list[np.ndarray]]] = {
        "english": lambda: spoken(ENGLISH, ("en-us", "en-gb", "en-029", "en-us-nyc", "en-gb-scotland"), n),
        "french": lambda: spoken(FRENCH, ("fr",), n),
        "german": lambda: spoken(GERMAN, ("de",), n),
        "noise": lambda: [noise(i) for i in range(n)],
        "melody": lambda: [melody(i) for i in range(n)],
        "near_silence": lambda: [near_silence(i) for i in range(n)],
    }
    return makers[category]()


def hear(model: MultimodalModel, clips: Sequence[np.ndarray], batch: int = 32, questions: bool = False) -> list[Heard]:
    """Each clip transcribed with its confidence (16 kHz clips; a model at another rate is not supported).
    `questions`: the clips are spoken questions, their transcripts rescored as the service rescores them
    (`model.api.RescoresHeard`; the confidence stays the greedy transcript's, as the service's refusal reads it)."""
    assert model.audio is not None and model.audio.sampling_rate == SAMPLING_RATE
    heard = []
    for start in range(0, len(clips), batch):
        part = clips[start : start + batch]
        if isinstance(model, ScoredTranscriber):
            updates = model.transcribe_scored(part)
            texts = [(u.text or "", u.avg_logprob, u.finish_reason) for u in updates]
        else:
            texts = [(t, None, None) for t in model.transcribe(part)]
        if questions and isinstance(model, RescoresHeard):
            asked = [i for i, (text, _, _) in enumerate(texts) if text]
            better = model.rescore_heard(model.encode_audios([part[i] for i in asked]), [texts[i][0] for i in asked])
            for i, text in zip(asked, better, strict=True):
                texts[i] = (text, *texts[i][1:])
        for clip, (text, logprob, reason) in zip(part, texts, strict=True):
            heard.append(Heard(text, logprob, no_speech_in(clip, SAMPLING_RATE), reason))
    return heard


def heard_sets(
    model: MultimodalModel, in_domain: int = 300, per_category: int = CLIPS_PER_CATEGORY
) -> dict[str, list[Heard]]:
    """Every category's clips heard: "in_domain" and each of `OUT_OF_DOMAIN`."""
    sets = {"in_domain": hear(model, in_domain_clips(in_domain))}
    for category in OUT_OF_DOMAIN:
        sets[category] = hear(model, out_of_domain_clips(category, per_category))
    return sets


def refusal_rates(sets: dict[str, list[Heard]], criteria: Sequence[Criterion]) -> dict[str, float]:
    """The share refused by `criteria` in each set, and over all out-of-domain sets together."""

    def share(heard: Sequence[Heard]) -> float:
        return sum(refusal(h, criteria) is not None for h in heard) / max(1, len(heard))

    rates = {name: share(heard) for name, heard in sets.items()}
    rates["out_of_domain"] = share([h for name, heard in sets.items() if name != "in_domain" for h in heard])
    return rates
