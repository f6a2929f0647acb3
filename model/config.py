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
class AudioConfig:
    sampling_rate: int = 16_000  # Hz; the service resamples uploads to it
    max_seconds: float = 15.0  # the longest audio (the window); longer is refused, never cut
    n_mels: int = 80  # log-mel bins (Whisper's front end), 10 ms hop
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0

    @property
    def max_frames(self) -> int:
        return int(self.max_seconds * self.sampling_rate) // 160

    @property
    def max_tokens(self) -> int:
        """Tokens of the longest audio: two stride-2 convolutions, 40 ms a token."""
        return (self.max_frames + 3) // 4


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    audio: AudioConfig | None = None  # the audio tower (speech to text), or none
    embed_dim: int = 384  # the frozen text tower's size: image embeddings are projected into its space
    max_question_tokens: int = 40  # longer questions keep their first 40 tokens (documented truncation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        decoder = dict(data["decoder"])
        top = {k: v for k, v in data.items() if k not in ("vision", "decoder", "audio")}
        # Two position experiments (rotary self-attention, `rope`; image-token positions, `context_positions`)
        # were removed from the code (the model card tells them); checkpoints that had them off still load.
        for options, key in ((decoder, "rope"), (top, "context_positions")):
            if options.pop(key, False):
                raise ValueError(f"this checkpoint was trained with {key}, an experiment mmserve no longer runs")
        audio = AudioConfig(**data["audio"]) if data.get("audio") else None
        return cls(vision=VisionConfig(**data["vision"]), decoder=DecoderConfig(**decoder), audio=audio, **top)


PRESETS: dict[str, ModelConfig] = {
    "base": ModelConfig(),
    "base+audio": ModelConfig(audio=AudioConfig()),  # the speech stage adds the audio tower to the base model
    # for unit tests: builds in milliseconds, random weights
    "tiny": ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, stem_channels=8, dim=32, depth=1, heads=2),
        decoder=DecoderConfig(dim=32, depth=2, heads=2, max_len=48),
    ),
    "tiny+audio": ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, stem_channels=8, dim=32, depth=1, heads=2),
        decoder=DecoderConfig(dim=32, depth=2, heads=2, max_len=48),
        audio=AudioConfig(max_seconds=10.0, dim=32, depth=1, heads=2),
    ),
}
