"""The decoder's vocabulary, built from the scene grammar: only a new tokenizer needs it.

Why not MiniLM's 30,522-token vocabulary: the decoder's embedding and output layers would hold 30,522 rows
(23 MB at d=192, over the whole checkpoint budget) to produce the ~40 words the scenes use. Instead the
vocabulary is every word of the grammar plus every letter and digit as a word start and as a `##`
continuation, so any text, in or out of the grammar, tokenizes into known pieces (characters outside
a-z0-9 and basic punctuation become [UNK]). Normalisation is BERT's: lower case, accents stripped,
control characters removed. Serving never builds one: it loads the `tokenizer.json` saved beside the
weights (`model.tokenizer.load_tokenizer`), so it never imports the scene generator.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from model.scenes import corpus
from model.tokenizer import SPECIAL_TOKENS, UNK


def build_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer whose vocabulary covers the scene grammar and every letter and digit."""
    words: list[str] = []
    for text in corpus():
        for word in text.replace("?", " ? ").replace(",", " , ").split():
            if word not in words:
                words.append(word)
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = [*SPECIAL_TOKENS, *words]
    vocab_list += [p for p in pieces if p not in vocab_list]
    vocab_list += [f"##{p}" for p in string.ascii_lowercase + string.digits]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(cleanup=True)
    return tokenizer
