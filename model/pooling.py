"""Mean pooling of token embeddings over the attention mask, as sentence-transformers computes it."""

from __future__ import annotations

import torch


def mean_pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, C) token embeddings and a (B, T) mask of real tokens → (B, C) fp32 means over the real tokens."""
    x = token_embeddings.float()
    mask = attention_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
