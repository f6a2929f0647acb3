"""Hyperparameters of the built-in model: one frozen dataclass per tower, and named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 64  # input side in pixels; every image is resized to it
    patch_size: int = 8  # side of the square each token sees: (64 / 8)^2 = 64 patch tokens
    stem_channels: int = 32  # a stride-2 conv before patchifying: early convolutions make ViTs sample-efficient
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 142  # the scene WordPiece vocabulary (model/train/vocabulary.py)
    dim: int = 192
    depth: int = 3
    heads: int = 3
    max_len: int = 64  # prompt plus generated tokens; generation stops there
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    embed_dim: int = 384  # the frozen text tower's size: image embeddings are projected into its space
    max_question_tokens: int = 40  # longer questions keep their first 40 tokens (documented truncation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        decoder = dict(data["decoder"])
        top = {k: v for k, v in data.items() if k not in ("vision", "decoder")}
        # Two position experiments (rotary self-attention, `rope`; image-token positions, `context_positions`)
        # were removed from the code (the model card tells them); checkpoints that had them off still load.
        for options, key in ((decoder, "rope"), (top, "context_positions")):
            if options.pop(key, False):
                raise ValueError(f"this checkpoint was trained with {key}, an experiment mmserve no longer runs")
        return cls(vision=VisionConfig(**data["vision"]), decoder=DecoderConfig(**decoder), **top)


PRESETS: dict[str, ModelConfig] = {
    "base": ModelConfig(),
    # for unit tests: builds in milliseconds, random weights
    "tiny": ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, stem_channels=8, dim=32, depth=1, heads=2),
        decoder=DecoderConfig(dim=32, depth=2, heads=2, max_len=48),
    ),
}
