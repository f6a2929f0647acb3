"""Generated accents (model/train/accents.py): drawn from the training accents' parts, spoken by espeak-ng."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from model.train import accents
from tests.support.audio import needs_espeak

RATE = 16_000


def lines(index: int, key: str) -> list[list[str]]:
    return [line.split()[1:] for line in accents.accent_file(index).splitlines() if line.split()[0] == key]


def test_an_accent_is_a_function_of_its_index_and_never_uses_a_held_out_accents_parts() -> None:
    files = [accents.accent_file(i) for i in range(accents.ACCENTS)]
    assert files == [accents.accent_file(i) for i in range(accents.ACCENTS)]
    assert len(set(files)) == accents.ACCENTS
    tables = {lines(i, "phonemes")[0][0] for i in range(accents.ACCENTS)}
    assert tables == set(accents.TABLES) and not tables & {"en-wi", "en-us-nyc"}  # the held-out accents' tables
    rules = {int(r) for i in range(accents.ACCENTS) for found in lines(i, "dictrules") for r in found}
    assert rules <= set(accents.DICTRULES) and 8 not in rules  # dictrules 8: the Caribbean accent's
    for i in range(accents.ACCENTS):
        replaced = [found[1] for found in lines(i, "replace")]
        assert 1 <= len(replaced) <= 4 and len(replaced) == len(set(replaced))  # one substitution a phoneme


@needs_espeak
def test_a_generated_accent_is_spoken_with_its_substitutions() -> None:
    """espeak-ng reads a generated accent from the data folder built for it: an accent that stops "th" says
    "the" with a "d" where the training accents say "D", and its speech lasts about as long as theirs."""
    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    path = accents.data_path(espeak)
    stopping = next(i for i in range(accents.ACCENTS) if ["00", "D", "d"] in lines(i, "replace"))
    name = accents.accent_name(stopping)

    def phonemes(*voice: str) -> str:
        said = subprocess.run([espeak, *voice, "-q", "-x", "the cat"], capture_output=True, text=True, check=True)
        return said.stdout.strip()

    assert "D" in phonemes("-v", "en-gb")
    heard = phonemes(f"--path={path}", "-v", name)
    assert heard.startswith("d") and "D" not in heard

    def seconds(*voice: str) -> float:
        wav = subprocess.run([espeak, *voice, "--stdout", "a large red circle"], capture_output=True, check=True)
        samples, rate = sf.read(io.BytesIO(wav.stdout), dtype="float32")
        return len(samples) / rate

    assert 0.6 < seconds(f"--path={path}", "-v", f"{name}+m3") / seconds("-v", "en-gb+m3") < 1.6


def test_varied_utterances_and_everyday_words_are_said_in_generated_accents(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.train import out_of_domain
    from model.train.speech import GENERATED_ACCENT_SHARE, HELD_OUT_ACCENTS, TRAIN_ACCENTS, varied_utterance

    said = [varied_utterance(seed, "a red circle").voice.split("+")[0] for seed in range(3000)]
    generated = [a for a in said if accents.is_generated(a)]
    english = [a for a in said if a in TRAIN_ACCENTS]
    assert len(generated) / (len(generated) + len(english)) == pytest.approx(GENERATED_ACCENT_SHARE, abs=0.04)
    assert len(set(generated)) > 0.9 * accents.ACCENTS and not set(said) & set(HELD_OUT_ACCENTS)
    # random everyday words (heard as nothing) come in generated accents too: an accent is never the reason
    spoken: list[str] = []
    monkeypatch.setattr(
        out_of_domain, "synthesise", lambda u, rate, seed: spoken.append(u.voice) or np.zeros(160, np.float32)
    )
    for seed in range(600):
        out_of_domain.clip(seed, RATE)
    assert any(accents.is_generated(v) for v in spoken)
