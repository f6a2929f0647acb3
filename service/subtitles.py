"""Subtitles from a transcript's segments: SubRip (`srt`) and WebVTT (`vtt`) bodies.

Written by the libraries that parse them too, `srt` (SubRip) and `webvtt-py` (WebVTT), so that the output
is what their parsers read back. One cue per segment, numbered from 1 (SubRip's numbering; WebVTT cues
carry no identifier), times to the millisecond. A cue's text is one line: the segment's whitespace
collapsed (a blank line would end the cue early), `-->` (the timing arrow, or longer) written `->`; in WebVTT `&`, `<`
and `>` are escaped as the format asks (`&amp;`, `&lt;`, `&gt;`: cue text may hold markup).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import timedelta

import srt
import webvtt

from service.segments import Segment


def to_srt(segments: Sequence[Segment]) -> str:
    """A SubRip body: one numbered cue per segment."""
    cues = [
        srt.Subtitle(index, timedelta(seconds=s.start_s), timedelta(seconds=s.end_s), cue_text(s.text))
        for index, s in enumerate(segments, start=1)
    ]
    return str(srt.compose(cues, reindex=False))


def to_vtt(segments: Sequence[Segment]) -> str:
    """A WebVTT body: the header, then one cue per segment."""
    cues = [
        webvtt.Caption(
            start=vtt_time(s.start_s), end=vtt_time(s.end_s), text=html.escape(cue_text(s.text), quote=False)
        )
        for s in segments
    ]
    body: str = webvtt.WebVTT(captions=cues).content
    return body


def cue_text(text: str) -> str:
    """A segment's text as one cue line: whitespace collapsed, no timing arrow."""
    return re.sub(r"--+>", "->", " ".join(text.split()))


def vtt_time(seconds: float) -> str:
    """HH:MM:SS.mmm, as WebVTT writes a time."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}.{ms % 1000:03d}"
