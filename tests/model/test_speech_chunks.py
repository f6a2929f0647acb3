"""Long recordings cut at pauses: espeak-ng sentences with pauses of known length, and the rules on their own.

The recordings' truth is where each sentence's sound is (`tests.support.recordings`); a chunk must hold
whole sentences, begin and end inside pauses, keep within the window, and time its speech within 0.3 s.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr

from model import ChunkingConfig, SpeechChunk, speech_chunks
from model.speech_chunks import FRAME_S, speech_regions, split_long
from model.train.speech import eval_sentences
from tests.support.recordings import RATE, Recording, long_recording, sentence

SENTENCES = eval_sentences(200)  # scene sentences: 1 to 6 s each, some with commas (short pauses inside)
TOLERANCE_S = 0.3


def sample_span(chunk: SpeechChunk) -> tuple[float, float]:
    """Where the chunk's samples lie in the recording, in seconds (exact to the sample)."""
    start = round(chunk.offset_s * RATE)
    return start / RATE, (start + chunk.samples.size) / RATE


def owner(chunks: list[SpeechChunk], start_s: float, end_s: float) -> list[int]:
    """The chunks whose samples hold any of [start_s, end_s]."""
    return [i for i, c in enumerate(chunks) if sample_span(c)[0] < end_s and sample_span(c)[1] > start_s]


def check_whole_sentences(recording: Recording, chunks: list[SpeechChunk], window_s: float) -> None:
    """Every sentence lies whole inside one chunk; chunks are in order, apart, within the window, and views
    of the recording at their offsets."""
    for said in recording.speech:
        holders = owner(chunks, said.start_s, said.end_s)
        assert len(holders) == 1, f"{said} is cut across chunks {holders}"
        low, high = sample_span(chunks[holders[0]])
        assert low <= said.start_s and said.end_s <= high, f"{said} overflows its chunk {low}-{high}"
    for before, after in itertools.pairwise(chunks):
        assert sample_span(before)[1] <= sample_span(after)[0]
    for chunk in chunks:
        assert chunk.samples.size / RATE <= window_s
        assert chunk.offset_s <= chunk.start_s < chunk.end_s <= sample_span(chunk)[1]
        start = round(chunk.offset_s * RATE)
        np.testing.assert_array_equal(chunk.samples, recording.samples[start : start + chunk.samples.size])


def test_one_chunk_per_sentence_cut_inside_the_pauses() -> None:
    rng = np.random.default_rng(1)
    texts = SENTENCES[:10]
    recording = long_recording(texts, pauses_s=list(rng.uniform(1.0, 2.0, len(texts) - 1)))
    chunks = speech_chunks(recording.samples, RATE, window_s=15.0)
    assert len(chunks) == len(texts)
    check_whole_sentences(recording, chunks, 15.0)
    for chunk, said in zip(chunks, recording.speech, strict=True):
        assert abs(chunk.start_s - said.start_s) <= TOLERANCE_S, (chunk.start_s, said)
        assert abs(chunk.end_s - said.end_s) <= TOLERANCE_S, (chunk.end_s, said)


def test_ten_minutes_in_pieces_within_the_window_covering_all_speech() -> None:
    """Sentences in paragraphs: 1–2 s between paragraphs, 0.2–0.35 s (too short to cut at unless the window
    forces it) between a paragraph's sentences; paragraphs run past the 15 s window, so some short pauses are
    cut at too, never a sentence."""
    rng = np.random.default_rng(2)
    texts, pauses = [], []
    while sum(pauses) + sum(sentence(text).size for text in texts) / RATE < 605:
        paragraph = [SENTENCES[int(i)] for i in rng.integers(0, len(SENTENCES), rng.integers(1, 6))]
        texts += paragraph
        pauses += [*rng.uniform(0.2, 0.35, len(paragraph) - 1), rng.uniform(1.0, 2.0)]
    recording = long_recording(texts, pauses_s=pauses[:-1], seed=2)
    assert 600 <= recording.seconds <= 625
    chunks = speech_chunks(recording.samples, RATE, window_s=15.0)
    check_whole_sentences(recording, chunks, 15.0)
    assert max(c.end_s - c.start_s for c in chunks) > 10  # short pauses were kept inside chunks ...
    assert len(chunks) > sum(p >= 1.0 for p in pauses)  # ... and some were cut at, to keep within the window
    for said in recording.speech:  # every sentence's start and end are timed within the tolerance
        [holder] = owner(chunks, said.start_s, said.end_s)
        first = chunks[holder].start_s <= said.start_s + TOLERANCE_S
        assert first and chunks[holder].end_s >= said.end_s - TOLERANCE_S


def test_the_model_rate_need_not_be_the_detectors() -> None:
    """A 24 kHz model: the detector hears a 16 kHz copy; the times and samples are the recording's own."""
    recording = long_recording(SENTENCES[:3], pauses_s=[1.5, 1.0])
    at_16k = speech_chunks(recording.samples, RATE, window_s=15.0)
    samples_24k = soxr.resample(recording.samples, RATE, 24_000).astype(np.float32)
    at_24k = speech_chunks(samples_24k, 24_000, window_s=15.0)
    assert len(at_24k) == len(at_16k) == 3
    for ours, reference in zip(at_24k, at_16k, strict=True):
        assert abs(ours.start_s - reference.start_s) <= 2 * FRAME_S and abs(ours.end_s - reference.end_s) <= 2 * FRAME_S
        assert ours.samples.size == pytest.approx((ours.samples.size / 24_000) * 24_000)
        assert abs(ours.samples.size / 24_000 - reference.samples.size / RATE) <= 4 * FRAME_S


def test_speech_longer_than_the_window_with_no_pause_is_cut_to_fit() -> None:
    recording = long_recording([" ".join(SENTENCES[i] for i in range(3)).replace(",", "")], pauses_s=[])
    window_s = 4.0
    assert recording.speech[0].end_s - recording.speech[0].start_s > 2 * window_s
    chunks = speech_chunks(recording.samples, RATE, window_s=window_s)
    assert len(chunks) >= 3 and all(c.samples.size / RATE <= window_s for c in chunks)
    assert chunks[0].start_s <= recording.speech[0].start_s + TOLERANCE_S
    assert chunks[-1].end_s >= recording.speech[0].end_s - TOLERANCE_S
    for before, after in itertools.pairwise(chunks):
        assert after.start_s - before.end_s < 0.5  # the speech is covered, with no gap but a pause between words


def test_noise_alone_gives_no_chunks() -> None:
    noise = np.random.default_rng(0).normal(0, 0.003, 20 * RATE).astype(np.float32)
    assert speech_chunks(noise, RATE, window_s=15.0) == []
    assert speech_chunks(np.zeros(0, np.float32), RATE, window_s=15.0) == []


def test_a_window_too_short_to_hold_the_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        speech_chunks(np.zeros(RATE, np.float32), RATE, window_s=0.3)


# The rules on hand-made probabilities (one value per 32 ms frame).


def frames(*runs: tuple[float, float]) -> np.ndarray:
    """(probability, seconds) runs → per-frame probabilities."""
    return np.concatenate([np.full(round(seconds / FRAME_S), p) for p, seconds in runs])


def test_regions_have_hysteresis_short_pauses_closed_and_blips_dropped() -> None:
    config = ChunkingConfig(threshold=0.5, min_pause_s=0.4, min_speech_s=0.25)
    probabilities = frames(
        (0.0, 1.0), (0.9, 1.0), (0.4, 0.5), (0.9, 1.0),  # 0.4 is above the exit threshold (0.35): still speech
        (0.0, 0.32), (0.9, 1.0),  # a 0.32 s pause: closed
        (0.0, 1.0), (0.9, 0.16),  # a blip: dropped
        (0.0, 1.0), (0.9, 0.64),
    )  # fmt: skip
    regions = speech_regions(probabilities, config)
    assert [(round(a * FRAME_S, 2), round(b * FRAME_S, 2)) for a, b in regions] == [(0.99, 4.8), (6.94, 7.58)]


def test_long_regions_are_cut_at_the_quietest_moment_that_fits() -> None:
    probabilities = frames((0.9, 3.0), (0.1, 0.32), (0.9, 3.0), (0.2, 0.32), (0.9, 3.0))
    smoothed = np.convolve(probabilities, np.ones(5) / 5, mode="same")
    region = (0, len(probabilities))
    cut_at_the_first_pause = split_long(region, smoothed, max_frames=round(5.0 / FRAME_S))
    assert len(cut_at_the_first_pause) == 3  # the second piece needs the second pause too
    assert [round(b * FRAME_S, 1) for _, b in cut_at_the_first_pause[:2]] == [3.2, 6.6]
    whole = split_long(region, smoothed, max_frames=len(probabilities))
    assert whole == [region]
    no_pause = split_long((0, 200), np.full(200, 0.9), max_frames=64)
    assert [b - a for a, b in no_pause] == [64, 64, 64, 8]
