"""`stop` strings: the text is cut at the first one found (which is not included), in whole texts and streams."""

from __future__ import annotations

from collections.abc import Sequence


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopScanner:
    """Streams text through, holding back what could still become a stop string.

    `feed(delta)` gives the text that is safe to send now; once a stop string has appeared, `stopped` is
    true and nothing more is given. `flush()` gives what was held back when the text ends without one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.stopped = False
        self._held = ""

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        text = self._held + delta
        before, found = cut_at_stop(text, self.stops)
        if found:
            self.stopped = True
            self._held = ""
            return before
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = ("" if self.stopped else self._held), ""
        return held

    def _partial_suffix(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
