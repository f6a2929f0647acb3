"""The encoder cache: image encodings kept by a digest of their pixels, least recently used first out.

A VQA client often asks several questions about one image; the second one skips the image encoder and
takes the image's cross-attention keys and values from here. Bounded in bytes (the encodings' own
sizes, on the device), and emptied when the device runs out of memory (`clear`). Only the inference thread
touches it, so it takes no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


E = TypeVar("E", bound=Sized)


class EncoderCache:
    """An LRU map from keys to encodings, holding at most `capacity_bytes` of them."""

    def __init__(self, capacity_bytes: int, on_lookup: Callable[[bool], None] = lambda hit: None) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._on_lookup = on_lookup  # counts hits and misses

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        """Let every encoding go (after out-of-memory: their device memory is freed before the retry)."""
        self._entries.clear()
        self._bytes = 0

    def get_or_compute(self, keys: Sequence[Hashable | None], compute: Callable[[list[int]], Sequence[E]]) -> list[E]:
        """The encoding of each key; `compute(indices)` encodes the misses (each distinct key once).

        A key of None is never cached (an input without a digest).
        """
        found: dict[Hashable, E] = {}
        missing: list[int] = []
        first_of: dict[Hashable, int] = {}
        for i, key in enumerate(keys):
            if key is not None and key in self._entries:
                self._entries.move_to_end(key)
                found[key] = self._entries[key]
                self._on_lookup(True)
            elif key is None or key not in first_of:
                if key is not None:
                    first_of[key] = i
                missing.append(i)
                self._on_lookup(False)
            else:
                self._on_lookup(True)  # the same image twice in one batch: encoded once
        computed = dict(zip(missing, compute(missing), strict=True)) if missing else {}
        for i, encoding in computed.items():
            key = keys[i]
            if key is not None:
                found[key] = encoding
                self._put(key, encoding)
        return [computed[i] if i in computed else found[key] for i, key in enumerate(keys)]

    def _put(self, key: Hashable, encoding: Sized) -> None:
        size = encoding.nbytes
        if size > self.capacity_bytes:
            return
        if key in self._entries:
            self._bytes -= self._entries.pop(key).nbytes
        self._entries[key] = encoding
        self._bytes += size
        while self._bytes > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
