"""Long recordings cut into pieces a speech model can hear: at pauses, each piece within the model's window.

A model hears at most its window (`AudioSpec.max_seconds`: 15 s for the built-in model, 30 s for
Whisper). A longer recording is cut where nobody speaks, found by a voice-activity detector (`model.vad`,
Silero VAD: a speech probability every 32 ms):

1. Speech regions, with hysteresis as Silero's own `get_speech_timestamps` does: a region starts at a
   frame whose probability reaches `threshold` and ends at the first frame below `threshold - 0.15`.
2. Regions closer than `min_pause_s` are one region: a shorter pause (between words, at a comma) is not a
   place to cut, so a chunk holds whole phrases. Regions shorter than `min_speech_s` (a click, a breath)
   are dropped.
3. A region longer than the window (less the padding) is cut where the speech probability, smoothed over
   ~160 ms, is lowest inside the stretch that fits: a pause, however short, wherever there is one. Only
   continuous speech longer than the window, with no pause at all, is cut inside speech.
4. Each region is padded by `pad_s` of the audio around it (the built-in model trained on utterances with
   up to 0.4 s of silence around them), never past half the pause to its neighbour: chunks never overlap.
   A chunk's `start_s`/`end_s` are its speech's (the times its transcript's segment reports); its samples
   start at `offset_s`, up to `pad_s` earlier.

The silence between chunks is not transcribed; a recording with no speech gives no chunks. Each chunk is
one region of speech (a sentence, or sentences with short pauses between them), and the chunks of
one recording are independent inputs: the service submits them as separate rows that decode together.
Pure numpy over the probabilities; the detector runs at 16 kHz (other rates are resampled for it alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soxr

from model.vad import FRAME_SAMPLES, SAMPLING_RATE, no_speech_probability, speech_probabilities

FRAME_S = FRAME_SAMPLES / SAMPLING_RATE  # 32 ms
_SMOOTHING_FRAMES = 5  # ~160 ms: a cut lands in the middle of a pause, not at its first quiet frame


@dataclass(frozen=True)
class ChunkingConfig:
    """How a recording is cut; the defaults suit read or conversational speech."""

    threshold: float = 0.5  # speech probability at which a region starts (Silero's default)
    min_pause_s: float = 0.4  # the shortest pause cut at; shorter ones stay inside a chunk
    min_speech_s: float = 0.25  # shorter regions are dropped as noise (Silero's default)
    pad_s: float = 0.2  # audio kept before and after each region (at most half the pause to the next)


@dataclass(frozen=True)
class SpeechChunk:
    """One piece of a recording: where its speech is in the recording, and its samples (a view of them)."""

    start_s: float  # the speech's start and end in the recording: the times of its transcript's segment
    end_s: float
    offset_s: float  # where `samples` start in the recording (up to `pad_s` before `start_s`)
    samples: np.ndarray  # float32 mono at the recording's rate: the speech and its padding
    no_speech_prob: float | None = None  # the detector's, over its speech's frames (`model.vad`); None: not measured


def speech_chunks(
    samples: np.ndarray, sampling_rate: int, window_s: float, config: ChunkingConfig = ChunkingConfig()
) -> list[SpeechChunk]:
    """The recording's speech in chunks of at most `window_s` seconds, cut at pauses, in order of time."""
    min_window_s = 2 * config.pad_s + 4 * FRAME_S
    if window_s < min_window_s:
        raise ValueError(f"a window of {window_s:g} s is too short to chunk into (at least {min_window_s:g} s)")
    if samples.size == 0:
        return []
    heard = samples if sampling_rate == SAMPLING_RATE else soxr.resample(samples, sampling_rate, SAMPLING_RATE)
    probabilities = speech_probabilities(np.asarray(heard, dtype=np.float32))
    max_frames = int((window_s - 2 * config.pad_s) / FRAME_S)
    smoothed = np.convolve(probabilities, np.ones(_SMOOTHING_FRAMES) / _SMOOTHING_FRAMES, mode="same")
    regions = [
        piece for region in speech_regions(probabilities, config) for piece in split_long(region, smoothed, max_frames)
    ]
    frame = FRAME_S * sampling_rate  # a detector frame in the recording's samples
    spans = [(round(a * frame), min(round(b * frame), len(samples))) for a, b in regions]
    bounds = padded(spans, len(samples), round(config.pad_s * sampling_rate))
    most = math.floor(window_s * sampling_rate)  # the frames' rounding to samples never adds one past the window
    return [
        SpeechChunk(
            start / sampling_rate,
            end / sampling_rate,
            low / sampling_rate,
            samples[low : min(high, low + most)],
            no_speech_probability(probabilities[a:b]),
        )
        for (start, end), (low, high), (a, b) in zip(spans, bounds, regions, strict=True)
    ]


def speech_regions(probabilities: np.ndarray, config: ChunkingConfig) -> list[tuple[int, int]]:
    """(start, end) frame ranges of speech: hysteresis, pauses under `min_pause_s` closed, blips dropped."""
    exit_threshold = max(config.threshold - 0.15, 0.01)
    regions: list[tuple[int, int]] = []
    start: int | None = None
    for frame, probability in enumerate(probabilities):
        if start is None and probability >= config.threshold:
            start = frame
        elif start is not None and probability < exit_threshold:
            regions.append((start, frame))
            start = None
    if start is not None:
        regions.append((start, len(probabilities)))
    merged: list[tuple[int, int]] = []
    for region in regions:
        if merged and (region[0] - merged[-1][1]) * FRAME_S < config.min_pause_s:
            merged[-1] = (merged[-1][0], region[1])
        else:
            merged.append(region)
    return [(a, b) for a, b in merged if (b - a) * FRAME_S >= config.min_speech_s]


def split_long(region: tuple[int, int], smoothed: np.ndarray, max_frames: int) -> list[tuple[int, int]]:
    """`region` in pieces of at most `max_frames`, each cut where the (smoothed) speech probability is lowest."""
    start, end = region
    pieces = []
    while end - start > max_frames:
        earliest = start + max(1, max_frames // 4)  # no sliver of a piece before the cut
        latest = start + max_frames
        # the lowest smoothed probability; among equals, the latest (the longest piece)
        window = smoothed[earliest : latest + 1][::-1]
        cut = latest - int(np.argmin(window))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def padded(spans: list[tuple[int, int]], total_samples: int, pad: int) -> list[tuple[int, int]]:
    """Sample ranges, each widened by `pad` samples, never past the middle of the pause to its neighbours."""
    # the furthest each span may reach: the middle of the pause to its neighbour (the recording's ends outside)
    if not spans:
        return []
    middles = [(spans[i][1] + spans[i + 1][0]) // 2 for i in range(len(spans) - 1)]
    lows, highs = [0, *middles], [*middles, total_samples]
    edges = zip(spans, lows, highs, strict=True)
    return [(max(start - pad, low), min(end + pad, high)) for (start, end), low, high in edges]
