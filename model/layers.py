"""Transformer building blocks: attention (self or cross, with an optional KV cache), MLP, pre-norm block.

Attention masks are boolean, True where a query may attend to a key, shaped to broadcast to
(B, nh, T, S). Callers make sure every query row can attend to at least one key (SDPA returns NaN for
a row that sees nothing, and a NaN in a padded row would leak into the cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Keys and values of one attention layer, (B, nh, S, hs) each; grows by one step per decode call.

    The reference decoder's cache (`model.generate.greedy_decode`); serving uses `SlotKV`.
    """

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


@dataclass
class SlotKV:
    """One attention layer's keys and values for a fixed number of sequence slots, preallocated.

    (slots, nh, S, hs) each, where S is the decoder's `max_len` (self-attention) or the image's token
    count (cross-attention). Row i of the running batch is slot i; a new token's keys are written in
    place at its position, so nothing is allocated or copied as sequences grow.
    """

    k: torch.Tensor
    v: torch.Tensor


class Attention(nn.Module):
    """Multi-head attention. Without `context` it is self-attention; with it, cross-attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0, "dim must divide into heads"
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        is_cross: bool = False,
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.heads, C // self.heads
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if is_cross and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # the image tokens' keys and values, computed once per generation
        else:
            source = x if context is None else context
            S = source.shape[1]
            k, v = self.kv(source).view(B, S, 2, nh, hs).permute(2, 0, 3, 1, 4)  # 2 × (B, nh, S, hs)
            if cache is not None:
                if not is_cross and cache.k is not None and cache.v is not None:
                    k = torch.cat([cache.k, k], dim=2)
                    v = torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        assert k is not None and v is not None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(B, T, C))

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `source` (B, S, C): two (B, nh, S, hs) tensors."""
        B, S, C = source.shape
        k, v = self.kv(source).view(B, S, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward_slots(
        self,
        x: torch.Tensor,
        cache: SlotKV,
        rows: slice | torch.Tensor,
        keys: int,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of `x` (B, T, C), the new tokens of slots `rows`, over the first `keys` cached keys.

        `rows`: consecutive slots (a slice: the attention reads views of them), or any B slots (an index
        tensor: it reads a gathered copy). Self-attention passes the new tokens' `positions` (B, T): their
        keys and values are written into the cache there first. Cross-attention passes none: the cache
        already holds the image's.
        """
        B, T, C = x.shape
        nh, hs = self.heads, C // self.heads
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if positions is not None:
            k, v = self.project_kv(x)
            slots = torch.arange(B, device=x.device) + (rows.start or 0) if isinstance(rows, slice) else rows
            cache.k[slots[:, None], :, positions] = k.transpose(1, 2)  # (B, T, nh, hs) written in place
            cache.v[slots[:, None], :, positions] = v.transpose(1, 2)
        k_all, v_all = cache.k[rows, :, :keys], cache.v[rows, :, :keys]  # (B, nh, keys, hs)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


@dataclass
class BlockCache:
    self_attn: KVCache
    cross_attn: KVCache


class Block(nn.Module):
    """Pre-norm residual block: self-attention, optional cross-attention to `context`, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln_cross = nn.LayerNorm(dim) if cross else None
        self.cross = Attention(dim, heads) if cross else None
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        cache: BlockCache | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`context_mask` (B, 1, 1, N): which context tokens are valid (None: all of them, as for an image)."""
        x = x + self.attn(self.ln1(x), mask=mask, cache=cache.self_attn if cache else None)
        if self.cross is not None and self.ln_cross is not None:
            cross_cache = cache.cross_attn if cache else None
            x = x + self.cross(self.ln_cross(x), context=context, mask=context_mask, cache=cross_cache, is_cross=True)
        return x + self.mlp(self.ln2(x))

    def forward_slots(
        self,
        x: torch.Tensor,
        self_cache: SlotKV,
        cross_cache: SlotKV | None,
        rows: slice | torch.Tensor,
        keys: int,
        mask: torch.Tensor,
        positions: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` for new tokens of slot-cached sequences (see `Attention.forward_slots`)."""
        x = x + self.attn.forward_slots(self.ln1(x), self_cache, rows, keys, mask, positions)
        if self.cross is not None and self.ln_cross is not None and cross_cache is not None:
            context = cross_cache.k.shape[2]  # an image's tokens are all valid (no mask); audio's are masked
            x = x + self.cross.forward_slots(self.ln_cross(x), cross_cache, rows, context, context_mask)
        return x + self.mlp(self.ln2(x))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings, (grid*grid, dim): half the channels encode y, half x.

    Fixed rather than learned: a learned table had to discover "left of" from data and did not in our
    prototype (position accuracy 0.2 vs 1.0 with these).
    """
    assert dim % 4 == 0, "dim must be a multiple of 4 for 2-D sin-cos embeddings"
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    coords = torch.arange(grid, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for axis in (y.flatten(), x.flatten()):
        angles = axis[:, None] * omega[None, :]  # (grid*grid, quarter)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init: small normal weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def scale_residual_init(model: nn.Module, depth: int) -> None:
    """Scale the projections into the residual stream by 1/sqrt(2*depth), as GPT-2 does."""
    for name, p in model.named_parameters():
        if name.endswith(("out.weight", "proj.weight")):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))
