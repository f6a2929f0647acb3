"""A long recording's transcript as segments: the chunks' transcripts stitched in time, and OpenAI's shapes.

A long recording is cut at pauses into chunks (`model.speech_chunks`), each transcribed on its own; each
chunk's transcript becomes one segment, timed by where the chunk's speech is in the recording. Chunks
never overlap, so stitching is putting the transcripts in order of time: no text is repeated at a seam and
none is merged away. A chunk heard as nothing (an empty transcript) gives no segment, as Whisper emits none
for silence; segment ids are consecutive from 0.

`verbose_segments` writes OpenAI's `verbose_json` segments (Whisper's fields). What the model does not
report stays honest rather than invented: `tokens` is empty; `avg_logprob` is the mean log-probability of
the segment's decoded tokens (its end token included) where the model reports it (the built-in model and
the Whisper adapter, `model.api.ScoredTranscriber`; null for others); `no_speech_prob` is the voice-activity
detector's (one minus the highest speech probability, smoothed over ~160 ms, over the segment's frames:
`model.understanding`); `temperature` is 0.0 (greedy decoding); `seek` is where the decoded audio starts,
in Whisper's unit (10 ms frames); `compression_ratio` is computed from the text as Whisper computes it
(UTF-8 bytes over their zlib-compressed size: a looping transcript compresses well and scores high).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model import SpeechChunk, compression_ratio


@dataclass(frozen=True)
class Segment:
    """What was said between `start_s` and `end_s` of the recording."""

    id: int
    start_s: float
    end_s: float
    text: str
    offset_s: float  # where the audio the model heard for it starts (before `start_s` by the chunk's padding)
    avg_logprob: float | None = None  # mean log-probability of its tokens, when the model reports it
    no_speech_prob: float | None = None  # the detector's probability that its audio holds no speech, when measured
    tokens: int = 0  # its decoded tokens (0 when the model does not count them)


def stitch(
    chunks: Sequence[SpeechChunk],
    texts: Sequence[str],
    avg_logprobs: Sequence[float | None] | None = None,
    no_speech_probs: Sequence[float | None] | None = None,
    tokens: Sequence[int] | None = None,
) -> list[Segment]:
    """One segment per chunk heard as something (its transcript stripped), in order of time, with the chunk's
    confidence where given (`tokens`: how many tokens each one's `avg_logprob` averages)."""
    if len(texts) != len(chunks):
        raise ValueError(f"{len(texts)} transcripts for {len(chunks)} chunks")
    n = len(chunks)
    logprobs = list(avg_logprobs) if avg_logprobs is not None else [None] * n
    no_speech = list(no_speech_probs) if no_speech_probs is not None else [None] * n
    counts = list(tokens) if tokens is not None else [0] * n
    heard = [
        (chunk, " ".join(text.split()), logprob, silence, count)
        for chunk, text, logprob, silence, count in zip(chunks, texts, logprobs, no_speech, counts, strict=True)
        if text.strip()
    ]
    heard.sort(key=lambda item: item[0].start_s)
    return [
        Segment(i, round(c.start_s, 3), round(c.end_s, 3), text, round(c.offset_s, 3), logprob, silence, count)
        for i, (c, text, logprob, silence, count) in enumerate(heard)
    ]


def transcript_text(segments: Sequence[Segment]) -> str:
    """The whole transcript: the segments' texts in order, one space apart."""
    return " ".join(segment.text for segment in segments)


def verbose_segments(segments: Sequence[Segment]) -> list[dict[str, object]]:
    """OpenAI's `verbose_json` segments (Whisper's fields; see the module's docstring for what each holds)."""
    return [
        {
            "id": segment.id,
            "seek": round(segment.offset_s * 100),
            "start": segment.start_s,
            "end": segment.end_s,
            "text": segment.text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": _rounded(segment.avg_logprob),
            "compression_ratio": round(compression_ratio(segment.text), 4),
            "no_speech_prob": _rounded(segment.no_speech_prob),
        }
        for segment in segments
    ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def verbose_json(segments: Sequence[Segment], language: str, duration_s: float) -> dict[str, object]:
    """OpenAI's whole `verbose_json` transcription body (without `words`: word times are not reported)."""
    return {
        "task": "transcribe",
        "language": language,
        "duration": round(duration_s, 3),
        "text": transcript_text(segments),
        "segments": verbose_segments(segments),
    }
