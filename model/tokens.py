"""Counting the tokens a text is embedded as, for usage reports, safely from any thread.

A Hugging Face fast tokenizer is one Rust object whose truncation and padding state is set on each call;
two threads calling it at once fail with "Already borrowed". The inference thread owns the model's
tokenizer, so counting uses a private copy of it, behind a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from tokenizers import Tokenizer


class TokenCounter:
    """Tokens per text (special tokens included, truncation applied), as the embedder would see them."""

    def __init__(self, tokenizer: Any, max_tokens: int, prepare: Callable[[str], str] | None = None) -> None:
        """`tokenizer`: a transformers tokenizer or a `tokenizers.Tokenizer`; `prepare`: the text as embedded
        (a prompt in front, lower-casing) when the embedder changes it first."""
        backend = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend = Tokenizer.from_str(backend.to_str())  # independent of the inference thread's copy
            backend.no_truncation()
            backend.no_padding()
        self._backend = backend
        self._slow = tokenizer  # a Python ("slow") tokenizer has no shared Rust state
        self._max_tokens = max_tokens
        self._prepare = prepare or (lambda text: text)
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[int]:
        prepared = [self._prepare(text) for text in texts]
        if not prepared:
            return []
        with self._lock:
            if self._backend is not None:
                lengths = [len(encoding.ids) for encoding in self._backend.encode_batch(prepared)]
            else:
                lengths = [len(ids) for ids in self._slow(prepared)["input_ids"]]
        return [min(length, self._max_tokens) for length in lengths]
