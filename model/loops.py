"""Stopping a transcript that loops: a length bound from the audio's duration, and a repetition check.

A speech decoder that loses its place can repeat one word ("large large large ...") or one phrase until
its limit. Two guards end such a row early, each cheap enough to run every step:

- `transcript_token_limit(seconds)`: at most `a + b × seconds` tokens. The speech stage speaks the scene
  grammar at 130 to 210 words a minute (at most 3.5 words a second) and its WordPiece vocabulary writes a
  word as one token (a comma as one more): over the 600 held-out evaluation utterances (training and
  held-out voices, silence around them included) the densest is 5.2 tokens a second of audio (the end
  token counted), and past the first 8 tokens no clip needs more than 2.5 a second. `a = 8`, `b = 8` is
  over three times that: a real transcript never reaches it (speech at 280 words a minute, a third faster
  than anything trained, still fits), while a loop stops after about a second's worth of audio per token.
- `repeats_at_end(ids, times)`: the last n tokens (n from 1 to `LONGEST_NGRAM`) repeated `times` times
  in a row. The scene grammar never says one word twice in a row, and a phrase at most `MAX_OBJECTS` (4)
  times (four identical objects, separated by commas: each repeat is then "a small red circle ,"): so
  `STOP_REPEATS = 4` of an n-gram ends the row, and the four-object case keeps its last object because
  the fourth repeat is followed by "and", not a comma (the caption's last item is joined with "and").
"""

from __future__ import annotations

from collections.abc import Sequence

TOKENS_PER_S = 8.0  # b: over three times what held-out speech needs past the first `a` (2.5 tokens a second)
BASE_TOKENS = 8  # a: room for a short clip's sentence however short the clip
STOP_REPEATS = 4  # k: an n-gram this many times in a row ends the row
LONGEST_NGRAM = 6  # the longest repeated phrase looked for (an object is 4 or 5 tokens with its comma)


def transcript_token_limit(seconds: float, base: int = BASE_TOKENS, per_second: float = TOKENS_PER_S) -> int:
    """The most tokens a transcript of `seconds` of audio may take: `base + per_second × seconds`."""
    return base + int(per_second * max(0.0, seconds))


def until_loop(ids: Sequence[int], times: int = STOP_REPEATS) -> list[int]:
    """`ids` up to the token that completes its first loop (all of them when none loops): what a decoding
    that stops at loops keeps of a decoding that does not."""
    end = next((k for k in range(1, len(ids) + 1) if repeats_at_end(ids[:k], times)), len(ids))
    return list(ids[:end])


def repeats_at_end(ids: Sequence[int], times: int = STOP_REPEATS, longest: int = LONGEST_NGRAM) -> bool:
    """Whether `ids` end with one n-gram (1 ≤ n ≤ `longest`) repeated `times` times in a row."""
    if times < 2:
        raise ValueError(f"a loop is a repeat: times must be at least 2, not {times}")
    for n in range(1, longest + 1):
        span = n * times
        if len(ids) < span:
            return False
        tail = ids[-n:]
        if all(list(ids[-span + i * n : len(ids) - span + (i + 1) * n]) == list(tail) for i in range(times - 1)):
            return True
    return False
