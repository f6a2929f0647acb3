"""Tiny random checkpoints of the built-in model, for tests that need a real model fast."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.config import PRESETS
from model.multimodal import MultimodalTransformer
from model.train.vocabulary import build_tokenizer


def tiny_checkpoint(directory: Path, seed: int = 0, init_std: float = 0.2, preset: str = "tiny") -> Path:
    """Write a tiny random built-in checkpoint to `directory` and return it (`preset`: "tiny", or
    "tiny+audio" for one with an audio tower, which can transcribe).

    Weights are drawn wider than the training init (`init_std`), so that outputs depend on the input
    image and on the question: equivalence tests mean nothing if every input gives the same answer.
    """
    torch.manual_seed(seed)
    module = MultimodalTransformer(PRESETS[preset])
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(0.0, init_std)
    save_checkpoint(module, build_tokenizer(), directory, name=f"mmserve-{preset}-random")
    return directory
