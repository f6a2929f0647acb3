"""What a generated row's stream shows: pieces of text that always add up to its final text.

`StreamingText` is a row's text as its stream tells it: `push` after each new id gives the new piece (often
""), `finish` the last one, and the pieces add up to the final text, never taking back what was told:

- a caption or a transcript shows its text as it decodes (`IncrementalText`);
- an answer shows nothing until the row ends. Its text is what follows the *last* `[SEP]` (a scratchpad
  before it is hidden, `after_scratchpad`), and until the row ends another `[SEP]` may come: the model
  sometimes writes its scratchpad twice ("zero left [SEP] four left [SEP] yes"), so text after a `[SEP]`
  may still turn out to be scratchpad. An answer is a word or two, so holding it back costs one step.

`IncrementalText` decodes a few tokens at a time (TGI's prefix and read offsets). Detokenising a row's
whole id list after every token costs O(T) per step and O(T²) per row, on the inference thread. As TGI's
`decode_token` does, each step decodes only a short window: the tokens from `prefix` (those that produced
the last emitted text) to the end, and the same window without the new tokens (`prefix`..`read`); the
difference is the new text. A WordPiece decoder renders each token on its own (a leading space unless it
is a `##` piece or the first token; cleanup per token), so the window's difference equals what decoding the
whole list would add, and the prefix window gives the new token the left context it needs (no space after
the first token). Text is taken only when the window has grown and does not end in U+FFFD (a byte-level
tokenizer's incomplete character): until then the offsets stay and the window grows.
"""

from __future__ import annotations

from collections.abc import Callable

_INCOMPLETE = "\ufffd"  # what a byte-level tokenizer shows for a character cut in the middle


def after_scratchpad(ids: list[int], sep_id: int, required: bool = False) -> list[int]:
    """The answer part of generated ids: what follows the last `[SEP]`; when there is none, all of them (an
    answer written directly), or none when a scratchpad was `required` (it never ended: it is not an answer)."""
    if sep_id in ids:
        return ids[len(ids) - ids[::-1].index(sep_id) :]
    return [] if required else ids


class IncrementalText:
    """The decoded text of one growing id list, a short window decoded per `push` (after each new id)."""

    def __init__(self, detokenize: Callable[[list[int]], str]) -> None:
        """`detokenize`: ids → text (the whole list's decoding, which each window's is a part of)."""
        self._detokenize = detokenize
        self._prefix = 0  # the window starts here: the ids that produced the last text taken
        self._read = 0  # ids before this are in `text`
        self.text = ""  # the text of ids[:read]

    def push(self, ids: list[int], final: bool = False) -> str:
        """The text of `ids` once it grew by one id (or more); all but an incomplete character at the end
        unless `final` (the list is whole: what it decodes to is its text)."""
        before = self._detokenize(ids[self._prefix : self._read])
        after = self._detokenize(ids[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith(_INCOMPLETE)):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)
        return self.text


class StreamingText:
    """The text one row's stream is told: `push` after each new id, `finish` once at its end."""

    def __init__(
        self, detokenize: Callable[[list[int]], str], sep_id: int, answer_only: bool, scratchpad: bool = False
    ) -> None:
        """`answer_only`: the text is what follows the last `sep_id`, told at the end; `scratchpad`: and
        with no `sep_id` written, there is no answer (`after_scratchpad`'s `required`)."""
        self._detokenize = detokenize
        self._sep = sep_id
        self._answer_only = answer_only
        self._scratchpad = scratchpad
        self._decoded = IncrementalText(detokenize)
        self.shown = ""  # what the stream has been told

    def push(self, ids: list[int]) -> str:
        """The new text to tell once `ids` grew by one id ("" when none yet)."""
        if self._answer_only:  # what follows the last [SEP] is known at the end only
            return ""
        return self._tell(self._decoded.push(ids))

    def finish(self, ids: list[int]) -> str:
        """The rest of the final text (the stream's last piece); `shown` is the final text afterwards."""
        if self._answer_only:
            return self._tell(self._detokenize(after_scratchpad(ids, self._sep, self._scratchpad)))
        return self._tell(self._decoded.push(ids, final=True))

    def _tell(self, text: str) -> str:
        """What `text` adds to what was told (it extends it: a decoded text only grows, an answer is told once)."""
        delta, self.shown = text[len(self.shown) :], text
        return delta
