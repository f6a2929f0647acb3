"""Our MiniLM text tower equals what sentence-transformers computes on the same folder."""

import torch
from sentence_transformers import SentenceTransformer

from model.evaluate import PARITY_SENTENCES
from model.text import minilm_path


def test_parity_with_sentence_transformers(text_tower) -> None:
    reference = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    sentences = [*PARITY_SENTENCES, "a large red circle", "Ünïcödé ✓ text", "long " * 400]
    expected = reference.encode(sentences, convert_to_tensor=True).float()
    ours = text_tower(sentences)
    cosine = (expected * ours).sum(-1)
    assert cosine.min() >= 0.9999, cosine
    assert ours.shape == (len(sentences), 384)


def test_similar_meanings_are_close(text_tower) -> None:
    a, b, c = text_tower(["a red circle", "a circle that is red", "quarterly tax filing deadline"])
    assert torch.dot(a, b) > torch.dot(a, c) + 0.2


def test_frozen(text_tower) -> None:
    text_tower.train()
    assert not text_tower.training
    assert not any(p.requires_grad for p in text_tower.parameters())
