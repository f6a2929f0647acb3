"""A minute of speech transcribed by the shipped built-in model through chunks: the whole text, within a small WER.

The recording is held-out scene sentences (never heard in training) read by espeak-ng with 1–2 s pauses over
low noise, ~60 s: four times the model's 15 s window. Each chunk is transcribed as one row of one batch
(as the service will submit them), and the stitched transcript is compared with the whole text.
"""

from __future__ import annotations

import numpy as np
import pytest

from model import load_model, speech_chunks
from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.evaluate import word_error_rate
from model.train.speech import eval_sentences
from service.segments import stitch, transcript_text
from tests.support.recordings import RATE, long_recording


@pytest.fixture(scope="module")
def shipped(text_tower):  # type: ignore[no-untyped-def]
    return load_builtin(WEIGHTS_DIR, "cpu", text_tower=text_tower)


def test_a_minute_of_speech_is_transcribed_whole(shipped) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    texts = eval_sentences(40)[:16]
    recording = long_recording(texts, pauses_s=list(rng.uniform(1.0, 2.0, len(texts) - 1)), voice="en-gb")
    assert recording.seconds > 4 * shipped.audio.max_seconds
    chunks = speech_chunks(recording.samples, RATE, shipped.audio.max_seconds)
    assert len(chunks) == len(texts)
    segments = stitch(chunks, shipped.transcribe([c.samples for c in chunks]))
    heard = transcript_text(segments)
    assert word_error_rate([" ".join(texts)], [heard]) < 0.05, (texts, heard)
    for segment, said in zip(segments, recording.speech, strict=True):
        assert abs(segment.start_s - said.start_s) <= 0.3 and abs(segment.end_s - said.end_s) <= 0.3


def test_whispers_window_is_chunked_to_as_well(tiny_whisper_dir) -> None:  # type: ignore[no-untyped-def]
    """The same chunking fits Whisper's window (4 s for the tiny random one, which refuses longer audio)."""
    whisper = load_model(str(tiny_whisper_dir), "cpu")
    recording = long_recording(eval_sentences(40)[:4], pauses_s=[1.0, 1.5, 1.2])
    chunks = speech_chunks(recording.samples, RATE, whisper.audio.max_seconds)
    assert len(chunks) >= 4 and all(c.samples.size / RATE <= whisper.audio.max_seconds for c in chunks)
    assert len(whisper.transcribe([c.samples for c in chunks], language="en")) == len(chunks)


def test_a_clip_within_the_window_holding_three_sentences_is_heard_whole_in_chunks(shipped) -> None:  # type: ignore[no-untyped-def]
    """The built-in model trained on one sentence at a time: three in one clip are heard as one when transcribed
    whole (docs/models.md has the numbers), and all three in chunks."""
    texts = [s for s in eval_sentences(40) if len(s.split()) <= 8][:3]
    recording = long_recording(texts, pauses_s=[0.6, 0.6], lead_s=0.3, voice="en-gb")
    assert recording.seconds <= shipped.audio.max_seconds
    chunks = speech_chunks(recording.samples, RATE, shipped.audio.max_seconds)
    heard = transcript_text(stitch(chunks, shipped.transcribe([c.samples for c in chunks])))
    assert len(chunks) == 3 and word_error_rate([" ".join(texts)], [heard]) < 0.05, heard
