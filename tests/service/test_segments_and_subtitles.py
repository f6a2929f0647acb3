"""Segments from chunks' transcripts, OpenAI's verbose_json segments, and SubRip / WebVTT bodies read back by the
`srt` and `webvtt-py` parsers to the same segments."""

from __future__ import annotations

import html
import io
import zlib

import numpy as np
import pytest
import srt
import webvtt

from model import SpeechChunk, compression_ratio
from service.segments import Segment, stitch, transcript_text, verbose_json, verbose_segments
from service.subtitles import cue_text, to_srt, to_vtt, vtt_time


def chunk(start_s: float, end_s: float, pad_s: float = 0.2) -> SpeechChunk:
    return SpeechChunk(start_s, end_s, start_s - pad_s, np.zeros(round((end_s - start_s + 2 * pad_s) * 16_000)))


CHUNKS = [chunk(1.0, 3.5), chunk(5.25, 9.0), chunk(10.4, 12.0), chunk(3725.5, 3727.125)]
TEXTS = ["a red circle", "  what colour is\n the square?  ", "", "a small <blue> square & a --> large one"]


def test_one_segment_per_heard_chunk_in_order() -> None:
    segments = stitch(CHUNKS, TEXTS)
    assert [(s.id, s.start_s, s.end_s, s.text) for s in segments] == [
        (0, 1.0, 3.5, "a red circle"),
        (1, 5.25, 9.0, "what colour is the square?"),
        (2, 3725.5, 3727.125, "a small <blue> square & a --> large one"),
    ]
    assert [s.offset_s for s in segments] == [0.8, 5.05, 3725.3]
    assert (
        transcript_text(segments) == "a red circle what colour is the square? a small <blue> square & a --> large one"
    )
    assert stitch(CHUNKS[::-1], TEXTS[::-1]) == segments  # in order of time, whatever order they came in
    assert stitch([], []) == []
    with pytest.raises(ValueError, match="3 transcripts for 4 chunks"):
        stitch(CHUNKS, TEXTS[:3])


def test_verbose_json_segments_in_openais_shape() -> None:
    segments = stitch(CHUNKS, TEXTS, avg_logprobs=[-0.1, -0.2, None, None], no_speech_probs=[0.01, 0.02, 0.9, None])
    body = verbose_json(segments, language="en", duration_s=3730.0)
    assert body["task"] == "transcribe" and body["language"] == "en" and body["duration"] == 3730.0
    assert body["text"] == transcript_text(segments)
    first, second, third = body["segments"]  # type: ignore[misc]
    assert first == {
        "id": 0,
        "seek": 80,
        "start": 1.0,
        "end": 3.5,
        "text": "a red circle",
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": -0.1,
        "compression_ratio": round(len(b"a red circle") / len(zlib.compress(b"a red circle")), 4),
        "no_speech_prob": 0.01,
    }
    assert (second["avg_logprob"], second["no_speech_prob"]) == (-0.2, 0.02)
    assert (third["avg_logprob"], third["no_speech_prob"], third["seek"]) == (None, None, 372530)
    assert verbose_segments([]) == []


def test_a_looping_transcript_compresses_well() -> None:
    assert compression_ratio("large " * 40) > 5 > compression_ratio("a small purple circle and a large red square")
    assert compression_ratio("") == 0.0


def test_srt_reads_back_as_the_segments() -> None:
    segments = stitch(CHUNKS, TEXTS)
    body = to_srt(segments)
    assert body.startswith("1\n00:00:01,000 --> 00:00:03,500\na red circle\n\n")
    cues = list(srt.parse(body))
    assert [c.index for c in cues] == [1, 2, 3]
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues] == [(s.start_s, s.end_s) for s in segments]
    assert [c.content for c in cues] == [cue_text(s.text) for s in segments]
    assert cues[2].content == "a small <blue> square & a -> large one"  # the timing arrow cannot be in a cue
    assert to_srt([]) == ""


def seconds(timestamp: str) -> float:
    hours, minutes, rest = timestamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_vtt_reads_back_as_the_segments() -> None:
    segments = stitch(CHUNKS, TEXTS)
    body = to_vtt(segments)
    assert body.startswith("WEBVTT\n\n00:00:01.000 --> 00:00:03.500\na red circle\n")
    captions = list(webvtt.from_buffer(io.StringIO(body)))
    assert [(seconds(c.start), seconds(c.end)) for c in captions] == [(s.start_s, s.end_s) for s in segments]
    assert [html.unescape(c.text) for c in captions] == [cue_text(s.text) for s in segments]
    assert captions[2].text == "a small &lt;blue&gt; square &amp; a -&gt; large one"  # cue text may hold markup
    assert captions[2].start == "01:02:05.500"
    assert to_vtt([]).strip() == "WEBVTT"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, "00:00:00.000"), (1.2345, "00:00:01.234"), (59.9996, "00:01:00.000"), (3600 * 25 + 0.5, "25:00:00.500")],
)
def test_vtt_times(value: float, expected: str) -> None:
    assert vtt_time(value) == expected


def test_a_segment_of_many_lines_is_one_cue_line() -> None:
    [segment] = stitch([chunk(0.5, 1.5)], ["one\n\n\ntwo\t three ---> four"])
    assert cue_text(segment.text) == "one two three -> four"
    assert [c.content for c in srt.parse(to_srt([segment]))] == ["one two three -> four"]
    assert isinstance(segment, Segment)
