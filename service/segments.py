"""A long recording's transcript as segments: the chunks' transcripts stitched in time, and OpenAI's shapes.

A long recording is cut at pauses into chunks (`model.speech_chunks`), each transcribed on its own; each
chunk's transcript becomes one segment, timed by where the chunk's speech is in the recording. Chunks
never overlap, so stitching is putting the transcripts in order of time: no text is repeated at a seam and
none is merged away. A chunk heard as nothing (an empty transcript) gives no segment, as Whisper emits none
for silence; segment ids are consecutive from 0.

`verbose_segments` writes OpenAI's `verbose_json` segments (Whisper's fields). What the model does not
report stays honest rather than invented: `tokens` is empty and `avg_logprob` / `no_speech_prob` are null
until the model reports them per transcript (then pass them in); `temperature` is 0.0 (greedy decoding);
`seek` is where the decoded audio starts, in Whisper's unit (10 ms frames); `compression_ratio` is computed
from the text as Whisper computes it (UTF-8 bytes over their zlib-compressed size: a looping transcript
compresses well and scores high).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from model import SpeechChunk


@dataclass(frozen=True)
class Segment:
    """What was said between `start_s` and `end_s` of the recording."""

    id: int
    start_s: float
    end_s: float
    text: str
    offset_s: float  # where the audio the model heard for it starts (before `start_s` by the chunk's padding)
    avg_logprob: float | None = None  # mean log-probability of its tokens, when the model reports it
    no_speech_prob: float | None = None  # the model's probability that the audio holds no speech, when reported


def stitch(
    chunks: Sequence[SpeechChunk],
    texts: Sequence[str],
    avg_logprobs: Sequence[float | None] | None = None,
    no_speech_probs: Sequence[float | None] | None = None,
) -> list[Segment]:
    """One segment per chunk heard as something (its transcript stripped), in order of time."""
    if len(texts) != len(chunks):
        raise ValueError(f"{len(texts)} transcripts for {len(chunks)} chunks")
    logprobs = list(avg_logprobs) if avg_logprobs is not None else [None] * len(chunks)
    no_speech = list(no_speech_probs) if no_speech_probs is not None else [None] * len(chunks)
    heard = [
        (chunk, " ".join(text.split()), logprob, silence)
        for chunk, text, logprob, silence in zip(chunks, texts, logprobs, no_speech, strict=True)
        if text.strip()
    ]
    heard.sort(key=lambda item: item[0].start_s)
    return [
        Segment(i, round(chunk.start_s, 3), round(chunk.end_s, 3), text, round(chunk.offset_s, 3), logprob, silence)
        for i, (chunk, text, logprob, silence) in enumerate(heard)
    ]


def transcript_text(segments: Sequence[Segment]) -> str:
    """The whole transcript: the segments' texts in order, one space apart."""
    return " ".join(segment.text for segment in segments)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: the text's UTF-8 size over its zlib-compressed size."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


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
            "avg_logprob": segment.avg_logprob,
            "compression_ratio": round(compression_ratio(segment.text), 4),
            "no_speech_prob": segment.no_speech_prob,
        }
        for segment in segments
    ]


def verbose_json(segments: Sequence[Segment], language: str, duration_s: float) -> dict[str, object]:
    """OpenAI's whole `verbose_json` transcription body (without `words`: word times are not reported)."""
    return {
        "task": "transcribe",
        "language": language,
        "duration": round(duration_s, 3),
        "text": transcript_text(segments),
        "segments": verbose_segments(segments),
    }
