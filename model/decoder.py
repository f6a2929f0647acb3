"""The text decoder: a causal Transformer with cross-attention to the image tokens and a KV cache."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from model.config import DecoderConfig
from model.layers import Block, BlockCache, KVCache, SlotKV, init_weights, scale_residual_init


class Decoder(nn.Module):
    """Token ids (B, T) and positions (B, T), attending to image tokens (B, N, d) → logits (B, T, V)."""

    def __init__(self, config: DecoderConfig, context_dim: int) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        # the image tokens may come from an encoder of another width
        self.context_proj = nn.Linear(context_dim, config.dim) if context_dim != config.dim else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.mlp_ratio, cross=True) for _ in range(config.depth)
        )
        self.ln_f = nn.LayerNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.apply(init_weights)
        scale_residual_init(self, config.depth)
        self.lm_head.weight = self.tok_emb.weight  # weight tying: one table to read and write tokens

    def new_cache(self) -> list[BlockCache]:
        return [BlockCache(KVCache(), KVCache()) for _ in self.blocks]

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        image_tokens: torch.Tensor,
        cache: list[BlockCache] | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`mask` (B, 1, T, S) says which of the S keys (cached + new) each new token may attend to;
        `context_mask` (B, 1, 1, N) which context tokens are valid (audio has a length; None: all)."""
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (B, T, d)
        context = self.context_proj(image_tokens)  # (B, N, d)
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            x = block(x, mask=mask, context=context, cache=layer_cache, context_mask=context_mask)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    # Serving: sequences in preallocated slots (see model.generate.DecodeState).
    def cross_kv(self, image_tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each block's cross-attention keys and values of the image tokens (B, N, d'): (B, nh, N, hs) each.

        Computed once per image (and kept in the encoder cache), never per decoding step.
        """
        context = self.context_proj(image_tokens)
        return [block.cross.project_kv(context) for block in self._blocks() if block.cross is not None]

    def forward_slots(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        self_kv: list[SlotKV],
        cross_kv: list[SlotKV],
        rows: slice | torch.Tensor,
        keys: int,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, d) of new tokens `ids` (B, T) at `positions` in slots `rows`.

        `mask` (B, 1, T, keys) says which of the slot's first `keys` cached positions each token sees;
        the new tokens' own keys are written at their positions before attention. `context_mask`
        (B, 1, 1, N): the valid context tokens of each row (None: all).
        """
        x = self.tok_emb(ids) + self.pos_emb(positions)
        for block, own, cross in zip(self._blocks(), self_kv, cross_kv, strict=True):
            x = block.forward_slots(x, own, cross, rows, keys, mask, positions, context_mask)
        return x

    def _blocks(self) -> list[Block]:
        return cast(list[Block], list(self.blocks))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(hidden))


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) validity → (B, 1, T, T) causal mask over valid keys; padded queries see themselves only."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]  # (B, T, T)
    mask |= torch.eye(T, dtype=torch.bool, device=valid.device)[None]  # no empty rows: see module doc
    return mask[:, None]
