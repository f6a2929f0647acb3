"""Spoken scene sentences for the speech stage: synthesised with espeak-ng, varied, some voices held out.

Every utterance is a pure function of its seed: a sentence of the scene grammar (a caption or a question,
half and half), a voice (an espeak-ng accent and a voice variant), a speed, a pitch, a gain, and sometimes
background noise and silence around it. espeak-ng (the Debian package `espeak-ng`) speaks at 22,050 Hz;
the waveform is resampled to the model's rate with soxr, as the service resamples uploads.

Voices: the training voices are six accents × ten variants (and, in the `hearing` stage's wider variety, other
languages' voices, accents generated from the training accents' parts (`model.train.accents`) and three of
flite's voices, speakers of another kind; one more flite voice is held out). Two
accents and three variants are never used in training; a held-out voice is a held-out accent with a held-out
variant, so both are unheard. Sentences: a tenth of all the grammar's sentences are held out, chosen by a
digest of their text (every one but "how many shapes are there?", the count family's only question); training
skips them, and the evaluation sentences are held-out ones (from seeds in the held-out range), so none of them
is ever heard.

The training pool built of them (and of out-of-domain clips, `model.train.out_of_domain`) is
`model.train.speech_pool`'s.
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from model import speech_conditions as c
from model.scenes import HELD_OUT_SEED_START, ask_any, make_scene
from model.train.accents import ACCENTS, accent_name, data_path, is_generated
from model.train.everyday import everyday_text

TRAIN_ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd")
HELD_OUT_ACCENTS = ("en-029", "en-us-nyc")  # Caribbean, New York City
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f5", "klatt")
HELD_OUT_VARIANTS = ("m7", "f4", "klatt3")
# The `hearing` stage's wider variety (`varied` utterances): more variants, and other languages' voices
# reading the English sentences; two of those voices are held out for the evaluation's "other voices" and
# read nothing in training (`out_of_domain.FOREIGN_VOICES`, the voices that read random words to be heard as
# nothing, are these same training voices: a voice is never by itself a reason to hear nothing).
MORE_VARIANTS = (
    "m6",
    "m8",
    "klatt2",
    "klatt4",
    "klatt5",
    "klatt6",
    "Alex",
    "Andy",
    "Annie",
    "Denis",
    "Gene",
    "Jacky",
    "Lee",
    "Michael",
    "Mike",
    "Storm",
    "Tweaky",
    "adam",
    "anika",
    "aunty",
    "belinda",
    "benjamin",
    "caleb",
    "david",
    "ed",
    "edward",
    "grandma",
    "grandpa",
    "iven",
    "john",
    "linda",
    "max",
    "norbert",
    "paul",
    "quincy",
    "rob",
    "robert",
    "shelby",
    "steph",
    "travis",
    "victor",
    "zac",
    "whisper",
    "croak",
)
OTHER_TRAIN_VOICES = (
    *("es", "pt", "pl", "ru", "hi", "vi", "sv", "cs", "hu", "ro"),
    *("fi", "tr", "id", "sw", "el", "da"),
)
HELD_OUT_OTHER_VOICES = ("nl", "it")
OTHER_VOICES_SHARE = 0.2  # of the varied utterances, read in one of `OTHER_TRAIN_VOICES`
ESPEAK_RATE = 22_050  # Hz, what espeak-ng writes
# Speakers of another kind than espeak-ng's formant synthesis: flite's voices (the Debian package `flite`),
# built from recordings of people (kal: diphones; awb, rms, slt: statistical parametric, CMU ARCTIC). A voice
# is written "flite:NAME". slt (the one woman) is held out for the evaluation's `flite_held_out_voice`.
FLITE = "flite:"
FLITE_TRAIN_VOICES = ("kal16", "rms", "awb")
FLITE_HELD_OUT_VOICES = ("slt",)
FLITE_SHARE = 0.2  # of the varied utterances, spoken by one of `FLITE_TRAIN_VOICES`
# Generated accents (`model.train.accents`: espeak-ng language files drawn at random from the training
# accents' phoneme tables and features common to many Englishes), for this share of the varied utterances
# that a training accent would have said
GENERATED_ACCENT_SHARE = 0.4

# evaluation sentences: seeds from here on (an offset into the held-out range, apart from the image sets)
SPEECH_EVAL_SEED_START = HELD_OUT_SEED_START + 5_000_000
EVAL_SENTENCES = 300


@dataclass(frozen=True)
class Utterance:
    text: str  # what is said, as the grammar writes it (the transcript the model learns)
    voice: str  # espeak-ng's -v: accent+variant
    speed: int  # words per minute
    pitch: int  # 0-99
    gain_db: float  # applied to the peak-normalised waveform
    snr_db: float | None  # background noise, or None
    pad_s: tuple[float, float]  # silence before and after
    # listening conditions (`model.speech_conditions`), applied in this order after the voice
    speed_factor: float = 1.0  # the waveform played faster or slower
    rt60: float | None = None  # a room's reverberation time, seconds
    talkers: tuple[int, ...] = ()  # seeds of other talkers' sentences, mixed in ...
    talkers_snr_db: float = 10.0  # ... this far below the speech
    telephone: bool = False  # an 8 kHz μ-law line
    codec: bool = False  # MP3 at a low bit rate


ALWAYS_TRAINED = "how many shapes are there?"  # the count family's one question: never held out


def sentence(seed: int) -> str:
    """A caption (half the time) or a question about the scene of `seed`."""
    rng = random.Random(seed * 7 + 3)
    scene = make_scene(seed)
    return scene.caption if rng.random() < 0.5 else ask_any(scene, rng).text


def is_held_out(text: str) -> bool:
    """Whether a sentence is one that training never speaks (a tenth of them, by a digest of the text)."""
    return text != ALWAYS_TRAINED and hashlib.blake2b(text.encode(), digest_size=8).digest()[0] % 10 == 0


def eval_sentences(n: int = EVAL_SENTENCES) -> list[str]:
    """`n` held-out sentences, half captions and half questions, from seeds in the held-out range.

    The captions are distinct; the held-out questions are fewer (the grammar has a few hundred questions,
    a tenth held out), so each comes back in turn, spoken each time in another voice.
    """
    captions: dict[str, None] = {}
    questions: dict[str, None] = {}
    for seed in range(SPEECH_EVAL_SEED_START, SPEECH_EVAL_SEED_START + 20_000):
        text = sentence(seed)
        if is_held_out(text):
            (questions if text.endswith("?") else captions)[text] = None
    half = n // 2
    asked = list(questions)
    return [*list(captions)[: n - half], *(asked[i % len(asked)] for i in range(half))]


def utterance(seed: int, text: str, held_out_voice: bool = False, varied: bool = False) -> Utterance:
    """The spoken variation of `text` for `seed`: voice, speed, pitch, gain, noise and silence; `varied`: from
    the wider variety (more voices, speeds and pitches, and listening conditions) of the `hearing` stage."""
    if varied:
        return varied_utterance(seed, text)
    rng = random.Random(seed * 13 + 11)
    accents, variants = (HELD_OUT_ACCENTS, HELD_OUT_VARIANTS) if held_out_voice else (TRAIN_ACCENTS, TRAIN_VARIANTS)
    return Utterance(
        text=text,
        voice=f"{rng.choice(accents)}+{rng.choice(variants)}",
        speed=rng.randint(130, 210),
        pitch=rng.randint(25, 75),
        gain_db=rng.uniform(-20.0, -1.0),
        snr_db=rng.uniform(10.0, 40.0) if rng.random() < 0.6 else None,
        pad_s=(rng.uniform(0.0, 0.4), rng.uniform(0.0, 0.4)),
    )


def maybe_generated(accent: str, rng: random.Random) -> str:
    """`accent`, or in its place (for a `GENERATED_ACCENT_SHARE` of the training accents) a generated one."""
    if accent in TRAIN_ACCENTS and rng.random() < GENERATED_ACCENT_SHARE:
        return accent_name(rng.randrange(ACCENTS))
    return accent


def varied_utterance(seed: int, text: str) -> Utterance:
    """`text` in a training voice of the wider variety, under conditions drawn at random: speed (0.9-1.1x the
    waveform), a room (RT60 0.2-1.2 s), other talkers (0-20 dB below), a telephone line or a low-bit-rate codec."""
    rng = random.Random(seed * 17 + 5)
    accent = rng.choice(OTHER_TRAIN_VOICES) if rng.random() < OTHER_VOICES_SHARE else rng.choice(TRAIN_ACCENTS)
    accent = maybe_generated(accent, random.Random(seed * 23 + 9))  # its own draws, as flite's below
    voice = f"{accent}+{rng.choice(TRAIN_VARIANTS + MORE_VARIANTS)}"
    other_kind = random.Random(seed * 19 + 7)  # its own draws: the espeak-ng utterances stay what they were
    if other_kind.random() < FLITE_SHARE:
        voice = FLITE + other_kind.choice(FLITE_TRAIN_VOICES)
    return Utterance(
        text=text,
        voice=voice,
        speed=rng.randint(90, 290),
        pitch=rng.randint(0, 99),
        gain_db=rng.uniform(-25.0, -1.0),
        snr_db=rng.uniform(5.0, 40.0) if rng.random() < 0.4 else None,
        pad_s=(rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.5)),
        speed_factor=rng.uniform(0.9, 1.1) if rng.random() < 0.4 else 1.0,
        rt60=rng.uniform(0.2, 1.2) if rng.random() < 0.25 else None,
        talkers=tuple(rng.randrange(1 << 30) for _ in range(rng.randint(1, 3))) if rng.random() < 0.25 else (),
        talkers_snr_db=rng.uniform(0.0, 20.0),
        telephone=rng.random() < 0.15,
        codec=rng.random() < 0.1,
    )


def training_utterance(seed: int, varied: bool = False) -> Utterance | None:
    """The training utterance of `seed`, or None when its sentence is held out (never heard)."""
    text = sentence(seed)
    return None if is_held_out(text) else utterance(seed, text, varied=varied)


def eval_utterances(held_out_voice: bool, n: int = EVAL_SENTENCES) -> list[Utterance]:
    """The evaluation set: the held-out sentences, each in a training voice or in a held-out one."""
    start = SPEECH_EVAL_SEED_START + (500_000 if held_out_voice else 0)  # its own variations
    return [utterance(start + i, text, held_out_voice) for i, text in enumerate(eval_sentences(n))]


# the evaluation's listening conditions: held-out sentences in training voices (unless the name says otherwise),
# each under one condition with fixed parameters
CONDITIONS: dict[str, dict[str, object]] = {
    "telephone": {"telephone": True},
    "slow_110wpm": {"speed": 110},
    "fast_240wpm": {"speed": 240},
    "babble_10db": {"talkers_snr_db": 10.0},  # two other talkers, 10 dB below
    "babble_5db": {"talkers_snr_db": 5.0},
    "reverb_1s": {"rt60": 1.0},
    "mp3": {"codec": True},
    "other_voices": {},  # other languages' voices never heard in training, reading the English sentences
    "flite_voices": {},  # flite's training voices (people's recordings, not espeak-ng), held-out sentences
    "flite_held_out_voice": {"voice": FLITE + FLITE_HELD_OUT_VOICES[0]},  # a flite voice never heard
}


def condition_utterances(name: str, n: int = 100) -> list[Utterance]:
    """`n` held-out sentences under the evaluation condition `name` (one of `CONDITIONS`)."""
    start = SPEECH_EVAL_SEED_START + 1_000_000 + 10_000 * list(CONDITIONS).index(name)
    out = []
    for i, u in enumerate(eval_utterances(False, n)):
        rng = random.Random(start + i)
        fields = dict(CONDITIONS[name])
        if "talkers_snr_db" in fields:
            fields["talkers"] = (start + 2 * i, start + 2 * i + 1)
        if name == "other_voices":
            fields["voice"] = f"{rng.choice(HELD_OUT_OTHER_VOICES)}+{u.voice.split('+')[1]}"
        if name == "flite_voices":
            fields["voice"] = FLITE + rng.choice(FLITE_TRAIN_VOICES)
        out.append(replace(u, **fields))  # type: ignore[arg-type]
    return out


def _program(name: str, needed_by: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{needed_by} needs {name} (Debian: apt-get install {name})")
    return found


def speak(u: Utterance) -> bytes:
    """The WAV file of `u.text` in `u.voice` at `u.speed` words a minute and `u.pitch` (0-99).

    flite has no words-a-minute: its durations are stretched by 175 / speed (espeak-ng's default rate is
    175), and its mean pitch is 85-204 Hz for 0-99 (rms's voice keeps its own pitch: flite ignores it there).
    """
    if u.voice.startswith(FLITE):
        flite = _program("flite", "a flite voice")
        settings = [f"duration_stretch={175 / u.speed:.3f}", f"int_f0_target_mean={85 + 1.2 * u.pitch:.0f}"]
        with tempfile.TemporaryDirectory() as folder:  # a file, not a pipe: flite seeks back to its header
            out = Path(folder) / "speech.wav"
            command = [flite, "-voice", u.voice.removeprefix(FLITE), *(a for v in settings for a in ("--setf", v))]
            subprocess.run([*command, "-t", u.text, "-o", str(out)], check=True, capture_output=True)
            return out.read_bytes()
    espeak = _program("espeak-ng", "speech training")
    command = [espeak, "--stdout", "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch), u.text]
    if is_generated(u.voice):  # a generated accent: its language file is in a data folder of our own
        command[1:1] = [f"--path={data_path(espeak)}"]
    return subprocess.run(command, check=True, capture_output=True).stdout


def synthesise(u: Utterance, sampling_rate: int, seed: int = 0) -> np.ndarray:
    """The utterance as float32 mono at `sampling_rate`: spoken, resampled, padded, scaled and noised."""
    samples, rate = sf.read(io.BytesIO(speak(u)), dtype="float32")
    samples = soxr.resample(samples, rate, sampling_rate).astype(np.float32)
    rng = np.random.default_rng(seed)
    before, after = (np.zeros(int(s * sampling_rate), np.float32) for s in u.pad_s)
    samples = np.concatenate([before, samples, after])
    samples *= 10 ** (u.gain_db / 20) / max(1e-6, float(np.abs(samples).max()))
    if u.snr_db is not None:
        power = float(np.mean(samples**2)) / 10 ** (u.snr_db / 10)
        noise = rng.standard_normal(len(samples)).astype(np.float32)
        if rng.random() < 0.5:  # brown-ish noise half the time: more like a room than a hiss
            walk = np.cumsum(noise)
            sums = np.cumsum(np.concatenate([np.zeros(256), walk]))
            noise = walk - (sums[256:] - sums[:-256]) / 256  # minus its moving average: no drift
        noise *= np.sqrt(power / max(1e-12, float(np.mean(noise**2))))
        samples = samples + noise.astype(np.float32)
    clipped: np.ndarray = np.clip(samples, -1.0, 1.0)
    return conditions(u, clipped, sampling_rate, seed)


def talker(seed: int) -> Utterance:
    """Another talker: a scene sentence or everyday words, in any training voice, plainly spoken."""
    rng = random.Random(seed)
    text = sentence(seed) if rng.random() < 0.5 else everyday_text(rng)
    accent = rng.choice(TRAIN_ACCENTS + OTHER_TRAIN_VOICES)
    return Utterance(
        text,
        f"{accent}+{rng.choice(TRAIN_VARIANTS + MORE_VARIANTS)}",
        rng.randint(120, 220),
        rng.randint(0, 99),
        -6.0,
        None,
        (0.0, 0.0),
    )


def conditions(u: Utterance, samples: np.ndarray, rate: int, seed: int) -> np.ndarray:
    """`samples` under `u`'s listening conditions (none: returned as they are)."""
    rng = np.random.default_rng(seed + 7)
    if u.speed_factor != 1.0:
        samples = c.change_speed(samples, u.speed_factor)
    if u.rt60 is not None:
        samples = c.reverberate(samples, rate, u.rt60, rng)
    if u.talkers:
        samples = c.with_talkers(samples, [synthesise(talker(t), rate, t) for t in u.talkers], u.talkers_snr_db)
    if u.telephone:
        samples = c.telephone(samples, rate)
    if u.codec:
        samples = c.compressed(samples, rate)
    out: np.ndarray = np.clip(samples, -1.0, 1.0).astype(np.float32)
    return out
