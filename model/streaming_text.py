"""A generated row's visible text, decoded a few tokens at a time (TGI's prefix and read offsets).

Detokenising a row's whole id list after every token costs O(T) per step and O(T²) per row, on the
inference thread. As TGI's `decode_token` does, each step decodes only a short window: the tokens from
`prefix` (those that produced the last emitted text) to the end, and the same window without the new
tokens (`prefix`..`read`); the difference is the new text. A WordPiece decoder renders each token on its
own (a leading space unless it is a `##` piece or the first token; cleanup per token), so the window's
difference equals what decoding the whole list would add, and the prefix window gives the new token the
left context it needs (no space after the first token). Text is taken only when the window has grown and
does not end in U+FFFD (a byte-level tokenizer's incomplete character): until then the offsets stay and
the window grows.

For an answer the visible text is what follows the last `[SEP]` (the scratchpad is hidden): a `[SEP]`
starts the text afresh, and nothing is visible before the first one.
"""

from __future__ import annotations

from collections.abc import Callable

_INCOMPLETE = "\ufffd"  # what a byte-level tokenizer shows for a character cut in the middle


class StreamingText:
    """The visible text of one growing id list; `push` after each new id."""

    def __init__(self, detokenize: Callable[[list[int]], str], sep_id: int, answer_only: bool) -> None:
        """`detokenize`: ids → text (the whole list's decoding, which each window's is a part of);
        `answer_only`: show only what follows the last `sep_id`."""
        self._detokenize = detokenize
        self._sep = sep_id
        self._answer_only = answer_only
        self._start: int | None = None if answer_only else 0  # where the visible ids begin (None: not yet)
        self._prefix = 0  # the window starts here: the ids that produced the last text taken
        self._read = 0  # ids before this are in `text`
        self.text = ""  # the visible text of ids[start:read]

    def push(self, ids: list[int]) -> str | None:
        """The visible text once `ids` grew by one id; None while an answer's scratchpad is still open."""
        if self._answer_only and ids[-1] == self._sep:  # the answer (so far) starts after this [SEP]
            self._start = self._prefix = self._read = len(ids)
            self.text = ""
            return self.text
        if self._start is None:
            return None
        before = self._detokenize(ids[self._prefix : self._read])
        after = self._detokenize(ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)
        return self.text
