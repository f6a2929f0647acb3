"""The voice-activity detector: our batched port equals Silero's own TorchScript model fed frame by frame."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from model.vad import FRAME_SAMPLES, speech_probabilities
from tests.support.recordings import long_recording

TEXTS = ["a large red circle", "what colour is the square?", "two small blue triangles", "a green diamond"]


def reference_probabilities(samples: np.ndarray) -> np.ndarray:
    """Silero's `load_silero_vad()` model, one 512-sample frame per call as its `get_speech_timestamps` feeds it."""
    threads = torch.get_num_threads()
    import silero_vad  # importing it sets torch's thread count to 1 for the process

    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, which the package's model is
        warnings.simplefilter("ignore", DeprecationWarning)
        model = silero_vad.load_silero_vad()
    torch.set_num_threads(threads)
    model.reset_states()
    padded = np.pad(samples, (0, -samples.size % FRAME_SAMPLES))
    with torch.inference_mode():
        return np.array([model(torch.from_numpy(frame), 16_000).item() for frame in padded.reshape(-1, FRAME_SAMPLES)])


def test_equals_the_reference_model() -> None:
    recording = long_recording(["a large red circle", "what colour is the square?"], pauses_s=[1.2], lead_s=0.5)
    samples = recording.samples[: recording.samples.size - 300]  # a last frame that is not whole
    ours = speech_probabilities(samples)
    expected = reference_probabilities(samples)
    assert ours.shape == expected.shape == (-(-samples.size // FRAME_SAMPLES),)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert ours.max() > 0.9 and ours[:10].max() < 0.2  # it does tell speech from the lead-in's silence


def test_long_input_is_encoded_in_blocks_the_same() -> None:
    """Past the encoder's block size (2,048 frames, ~65 s) the frames still see their true context."""
    recording = long_recording(["a small green square"] * 34, pauses_s=[1.0] * 33)
    assert recording.seconds > 70
    probabilities = speech_probabilities(recording.samples)
    np.testing.assert_allclose(probabilities, reference_probabilities(recording.samples), atol=1e-4)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513])
def test_one_probability_per_started_frame(size: int) -> None:
    probabilities = speech_probabilities(np.zeros(size, np.float32))
    assert probabilities.shape == (-(-size // FRAME_SAMPLES),) and probabilities.dtype == np.float32
    assert np.all(probabilities < 0.5)


def test_threads_share_one_detector() -> None:
    """The decode pool's threads call it at once: it keeps no state between calls."""
    recordings = [long_recording([text], pauses_s=[], lead_s=0.5 + i / 10).samples for i, text in enumerate(TEXTS)]
    alone = [speech_probabilities(samples) for samples in recordings]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(speech_probabilities, recordings * 3))
    for i, probabilities in enumerate(together):
        np.testing.assert_allclose(probabilities, alone[i % len(alone)], atol=1e-6)
