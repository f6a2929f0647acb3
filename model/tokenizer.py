"""The decoder's tokenizer: a WordPiece vocabulary of the scene grammar, run by `tokenizers`.

A checkpoint carries its tokenizer as a standard `tokenizer.json` beside the weights, and serving loads
it from there. Building a new one needs the scene grammar, so that lives with training
(`model.train.vocabulary.build_tokenizer`, which also says why the vocabulary is so small).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

PAD, UNK, BOS, EOS, SEP = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, SEP)


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer saved at `path` (a `tokenizer.json`)."""
    return Tokenizer.from_file(str(path))
