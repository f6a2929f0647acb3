"""The image encoder: a ViT with a small convolutional stem and fixed 2-D sin-cos positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VisionConfig
from model.layers import Block, init_weights, scale_residual_init, sincos_2d

# Inputs are scaled from [0, 1] to roughly zero mean and unit spread.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


class VisionEncoder(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → CLS embedding (B, d) and patch tokens (B, N, d)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch_size
        self.stem = nn.Conv2d(3, config.stem_channels, kernel_size=3, stride=2, padding=1)
        # after the stride-2 stem, a patch of `patch_size` pixels is patch_size/2 stem cells
        half = config.patch_size // 2
        self.patchify = nn.Conv2d(config.stem_channels, config.dim, kernel_size=half, stride=half)
        self.register_buffer("pos", sincos_2d(grid, config.dim), persistent=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.dim)
        self.apply(init_weights)
        scale_residual_init(self, config.depth)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels - PIXEL_MEAN) / PIXEL_STD
        x = self.patchify(F.gelu(self.stem(x)))  # (B, d, g, g)
        x = x.flatten(2).transpose(1, 2) + self.pos.to(x.dtype)  # (B, N, d)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, d)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return x[:, 0], x[:, 1:]
