"""When a transcript is not understood (`model.understanding`): the criteria, their defaults (the service's
settings), and the detector's no-speech probability of speech, noise and quiet speech."""

from __future__ import annotations

import numpy as np
import pytest

from model.understanding import (
    MAX_NO_SPEECH_PROB,
    MIN_AVG_LOGPROB,
    Heard,
    default_criteria,
    looped,
    low_confidence,
    no_speech,
    refusal,
)
from model.vad import SAMPLING_RATE, no_speech_in
from service.settings import Settings
from tests.support.audio import needs_espeak, speech


def test_each_criterion_names_its_reason_and_the_first_one_wins() -> None:
    criteria = default_criteria(0.01, -0.5)
    assert refusal(Heard("what colour is the circle?", -0.1, 0.001, "stop"), criteria) is None
    assert refusal(Heard("is there a?", -2.31, 0.98, "stop"), criteria) == "no speech: no_speech_prob 0.98 above 0.01"
    assert refusal(Heard("is there a?", -2.31, 0.0, "stop"), criteria) == "avg_logprob -2.31 below -0.5"
    assert refusal(Heard("a a a a", -0.1, 0.0, "repetition"), criteria) == "the transcript repeated itself"
    for blank in ("", "  "):  # audio the model wrote nothing for (not a scene sentence), however sure of it
        assert refusal(Heard(blank, -0.01, 0.0, "stop"), criteria) == "nothing in it was understood as a scene sentence"
    unknown = Heard("what colour is the circle?", None, None)  # a model that reports nothing is never refused
    assert refusal(unknown, [no_speech(0.0), low_confidence(0.0), looped]) is None


def test_the_service_defaults_are_the_chosen_thresholds() -> None:
    settings = Settings()
    assert settings.spoken_max_no_speech_prob == MAX_NO_SPEECH_PROB
    assert settings.spoken_min_avg_logprob == MIN_AVG_LOGPROB


@needs_espeak
@pytest.mark.parametrize("gain_db", [-3.0, -50.0])
def test_speech_at_any_level_is_speech_and_noise_is_not(gain_db: float) -> None:
    """Heard at its own level, speech at -50 dB of full scale looks like silence to the detector."""
    samples, rate = speech("what colour is the circle?")
    samples = samples / np.abs(samples).max() * 10 ** (gain_db / 20)
    assert no_speech_in(samples.astype(np.float32), rate) < MAX_NO_SPEECH_PROB
    hiss = 10 ** (gain_db / 20) * np.random.default_rng(0).standard_normal(2 * SAMPLING_RATE).astype(np.float32)
    assert no_speech_in(hiss / 4, SAMPLING_RATE) > 0.5
