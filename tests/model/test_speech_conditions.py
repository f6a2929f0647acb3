"""Listening conditions (model/speech_conditions.py), SpecAugment and the hearing stage's pool items."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from model import speech_conditions as c
from tests.support.audio import needs_espeak, needs_flite

RATE = 16_000


def tone(frequency: float, seconds: float = 1.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def power_above(samples: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    frequencies = np.fft.rfftfreq(len(samples), 1 / RATE)
    return float(spectrum[frequencies > hz].sum() / spectrum.sum())


def test_a_telephone_line_keeps_speech_band_and_drops_what_is_above_4_khz() -> None:
    mixed = tone(440) + tone(6_000)
    heard = c.telephone(mixed, RATE)
    assert len(heard) == len(mixed) and heard.dtype == np.float32
    assert power_above(mixed, 4_000) > 0.4 and power_above(heard, 4_000) < 0.01  # the 6 kHz tone is gone
    # the 440 Hz tone survives 8-bit μ-law: its correlation with the original stays high
    assert np.corrcoef(c.telephone(tone(440), RATE), tone(440))[0, 1] > 0.99


def test_speed_changes_the_duration_by_the_factor() -> None:
    assert len(c.change_speed(tone(440, 2.0), 1.1)) == pytest.approx(2.0 * RATE / 1.1, rel=0.01)
    assert len(c.change_speed(tone(440, 2.0), 0.9)) == pytest.approx(2.0 * RATE / 0.9, rel=0.01)


def test_a_room_leaves_a_tail_that_decays_by_its_reverberation_time() -> None:
    click = np.zeros(2 * RATE, np.float32)
    click[0] = 0.5
    rng = np.random.default_rng(0)
    short, long = (c.reverberate(click, RATE, rt60, np.random.default_rng(0)) for rt60 in (0.2, 1.0))
    tail = slice(int(0.3 * RATE), int(0.6 * RATE))  # after a 0.2 s room has died away, a 1 s room still rings
    assert np.abs(long[tail]).max() > 20 * np.abs(short[tail]).max()
    assert np.abs(long).max() == pytest.approx(0.5, rel=1e-3)  # the level of the dry sound is kept
    assert c.room_response(0.5, RATE, rng)[0] == 1.0


def test_other_talkers_are_mixed_at_the_asked_level_below_the_speech() -> None:
    speech, other = tone(300), tone(700, 0.3)  # the other talker looped to the length
    mixed = c.with_talkers(speech, [other], 10.0)
    babble = mixed - speech
    assert 10 * np.log10(np.mean(speech**2) / np.mean(babble**2)) == pytest.approx(10.0, abs=0.05)
    assert c.with_talkers(speech, [], 10.0) is speech


def test_a_low_bit_rate_codec_keeps_the_length_and_roughly_the_sound() -> None:
    heard = c.compressed(tone(440), RATE)
    assert len(heard) == RATE and np.corrcoef(heard[2000:-2000], tone(440)[2000:-2000])[0, 1] > 0.9


def test_spec_augment_masks_inside_each_utterance_and_leaves_padding_alone() -> None:
    from model.train.spec_augment import spec_augment

    features = torch.randn(3, 200, 80)
    lengths = torch.tensor([200, 120, 50])
    features[1, 120:] = 0.0
    features[2, 50:] = 0.0
    out = spec_augment(features, lengths, torch.Generator().manual_seed(0), max_freq=12, max_time_share=0.1)
    assert out.shape == features.shape and not torch.equal(out, features)
    assert torch.equal(out[1, 120:], features[1, 120:]) and torch.equal(out[2, 50:], features[2, 50:])
    for b, length in enumerate(lengths.tolist()):
        changed = (out[b, :length] != features[b, :length]).float()
        masked_bins = int((changed.mean(0) == 1).sum())  # whole mel bins masked over the utterance
        assert masked_bins <= 2 * 12 and changed.mean() < 0.5
    again = spec_augment(features, lengths, torch.Generator().manual_seed(0), max_freq=12, max_time_share=0.1)
    assert torch.equal(out, again)  # a pure function of the generator's seed


def test_a_warped_spectrum_moves_its_formants_by_the_factor_and_leaves_padding_alone() -> None:
    from model.audio import log_mel
    from model.config import AudioConfig
    from model.train.spec_augment import _centres, warp_frequencies, warp_index

    assert torch.allclose(warp_index(80, 1.0), torch.arange(80, dtype=torch.float32), atol=1e-4)
    # a tone at 1 kHz, scaled by 1.1, peaks where a tone at 1.1 kHz does
    config = AudioConfig()
    t = np.arange(RATE) / RATE
    tone = lambda hz: log_mel((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), config)  # noqa: E731
    features = torch.stack([tone(1000.0), torch.zeros(100, 80)])
    lengths = torch.tensor([100, 40])
    features[1, :40] = tone(2000.0)[:40]
    always = warp_frequencies(features, lengths, torch.Generator().manual_seed(0), share=1.0, low=1.1, high=1.1)
    centres = _centres(80)
    peak = lambda rows: float(centres[int(rows.mean(0).argmax())])  # noqa: E731
    assert abs(peak(always[0]) - peak(tone(1100.0))) <= 40 and peak(tone(1000.0)) < peak(always[0])
    assert torch.equal(always[1, 40:], features[1, 40:])  # padding as it was
    never = warp_frequencies(features, lengths, torch.Generator().manual_seed(0), share=0.0)
    assert torch.equal(never, features)


def test_everyday_words_hold_no_scene_word() -> None:
    from model.train.everyday import SCENE_WORDS, everyday_words

    words = everyday_words()
    assert len(words) > 5_000 and not set(words) & set(SCENE_WORDS)


@needs_espeak
def test_the_hearing_pool_holds_scene_sentences_and_audio_to_transcribe_as_nothing() -> None:
    from model.refusal_eval import FRENCH, GERMAN
    from model.train import out_of_domain
    from model.train.speech import is_held_out
    from model.train.speech_pool import Variety, pool_item

    items = [pool_item(seed, RATE, Variety(varied=True, out_of_domain=0.3)) for seed in range(60)]
    kept = [item for item in items if item is not None]
    blank = [samples for text, samples in kept if text == ""]
    assert 5 <= len(blank) <= 35  # about 0.3 of them
    assert all(not is_held_out(text) for text, _ in kept if text)
    assert all(s.dtype == np.float32 and np.abs(s).max() <= 1.0 and len(s) > 0 for _, s in kept)
    assert np.array_equal(out_of_domain.clip(7, RATE), out_of_domain.clip(7, RATE))  # a function of its seed
    # the evaluation's languages are never spoken in training
    assert not {"fr", "de"} & set(out_of_domain.FOREIGN_VOICES)
    assert not {text for text, _ in kept} & {*FRENCH, *GERMAN}


@needs_espeak
def test_evaluation_conditions_apply_what_they_name() -> None:
    from model.train.speech import (
        CONDITIONS,
        HELD_OUT_OTHER_VOICES,
        OTHER_TRAIN_VOICES,
        condition_utterances,
        is_held_out,
    )

    assert all(is_held_out(condition_utterances(name, 1)[0].text) for name in CONDITIONS)  # never heard
    assert condition_utterances("telephone", 2)[1].telephone
    assert {u.speed for u in condition_utterances("slow_110wpm", 3)} == {110}
    assert all(len(u.talkers) == 2 and u.talkers_snr_db == 10.0 for u in condition_utterances("babble_10db", 3))
    voices = {u.voice.split("+")[0] for u in condition_utterances("other_voices", 10)}
    assert voices <= set(HELD_OUT_OTHER_VOICES) and not voices & set(OTHER_TRAIN_VOICES)


def test_the_other_voices_evaluation_uses_voices_training_never_heard() -> None:
    """The `other_voices` condition's voices read nothing in training (neither scene sentences nor random
    words), every voice that reads random words as nothing reads scene sentences too, and no variant is drawn
    twice as often as the others."""
    from model.train.out_of_domain import FOREIGN_VOICES
    from model.train.speech import (
        HELD_OUT_OTHER_VOICES,
        HELD_OUT_VARIANTS,
        MORE_VARIANTS,
        OTHER_TRAIN_VOICES,
        TRAIN_VARIANTS,
    )

    assert not set(HELD_OUT_OTHER_VOICES) & {*FOREIGN_VOICES, *OTHER_TRAIN_VOICES}
    assert set(FOREIGN_VOICES) <= set(OTHER_TRAIN_VOICES)
    variants = [*TRAIN_VARIANTS, *MORE_VARIANTS]
    assert len(variants) == len(set(variants)) and not set(variants) & set(HELD_OUT_VARIANTS)


@needs_flite
def test_flite_speaks_at_the_utterances_speed_and_pitch() -> None:
    """A "flite:NAME" voice is spoken by flite: slower words last longer, a higher pitch is higher."""
    import io

    import soundfile as sf

    from model.train.speech import Utterance, speak, synthesise

    said = Utterance("a large red circle", "flite:awb", 175, 50, -6.0, None, (0.0, 0.0))

    def heard(u: Utterance) -> tuple[np.ndarray, int]:
        samples, rate = sf.read(io.BytesIO(speak(u)), dtype="float32")
        return samples, rate

    plain, rate = heard(said)
    slow, _ = heard(replace(said, speed=100))
    assert rate == 16_000 and len(slow) / len(plain) == pytest.approx(1.75, rel=0.15)
    low, high = heard(replace(said, pitch=0))[0], heard(replace(said, pitch=99))[0]
    assert pitch_hz(high, rate) > 1.5 * pitch_hz(low, rate)
    samples = synthesise(said, RATE)
    assert samples.dtype == np.float32 and 0 < np.abs(samples).max() <= 1.0


def pitch_hz(samples: np.ndarray, rate: int) -> float:
    """The median pitch of the voiced 40 ms frames (the autocorrelation's peak between 60 and 400 Hz)."""
    n, found = int(0.04 * rate), []
    for i in range(0, len(samples) - n, n // 2):
        frame = samples[i : i + n] - samples[i : i + n].mean()
        if np.sqrt((frame**2).mean()) < 0.02 * np.abs(samples).max():
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lag = int(rate / 400) + int(np.argmax(ac[int(rate / 400) : int(rate / 60)]))
        if ac[lag] > 0.3 * ac[0]:
            found.append(rate / lag)
    return float(np.median(found))


def test_flite_voices_train_one_is_held_out_and_only_the_evaluation_speaks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from model.train import out_of_domain
    from model.train.speech import (
        FLITE,
        FLITE_HELD_OUT_VOICES,
        FLITE_SHARE,
        FLITE_TRAIN_VOICES,
        condition_utterances,
        varied_utterance,
    )

    assert not set(FLITE_HELD_OUT_VOICES) & set(FLITE_TRAIN_VOICES)
    voices = [varied_utterance(seed, "a red circle").voice for seed in range(3000)]
    flite = [v.removeprefix(FLITE) for v in voices if v.startswith(FLITE)]
    assert set(flite) == set(FLITE_TRAIN_VOICES)
    assert len(flite) / len(voices) == pytest.approx(FLITE_SHARE, abs=0.03)
    assert {u.voice for u in condition_utterances("flite_held_out_voice", 5)} == {FLITE + FLITE_HELD_OUT_VOICES[0]}
    assert {u.voice.removeprefix(FLITE) for u in condition_utterances("flite_voices", 30)} == set(FLITE_TRAIN_VOICES)
    # random everyday words (heard as nothing) are said in flite's training voices too, never the held-out one
    spoken: list[str] = []
    monkeypatch.setattr(
        out_of_domain, "synthesise", lambda u, rate, seed: spoken.append(u.voice) or np.zeros(160, np.float32)
    )
    for seed in range(600):
        out_of_domain.clip(seed, RATE)
    said_by_flite = {v.removeprefix(FLITE) for v in spoken if v.startswith(FLITE)}
    assert said_by_flite == set(FLITE_TRAIN_VOICES)
