"""The built-in text-to-image generator: a small diffusers UNet that draws synthetic scenes from captions.

The generator is trained by `mmserve train --stage generate` (model/train/generator.py) on the scenes of
`model.scenes`. It is stored as a diffusers-style folder (default `model/weights/generator/`):
- `model_index.json`: what a loader needs besides the parts (see `GeneratorIndex`);
- `unet/`: a `UNet2DConditionModel` (fp16 safetensors), `UNet2DConditionModel.from_pretrained(folder,
  subfolder="unet")`;
- `scheduler/`: a `FlowMatchEulerDiscreteScheduler`, `from_pretrained(folder, subfolder="scheduler")`.

How an image is made (the loop below is the parity reference for any other serving path):
- conditioning: the frozen all-MiniLM-L6-v2's last hidden state of the prompt (its [CLS] ... [SEP] tokens,
  at most `max_text_tokens`), with its attention mask passed as `encoder_attention_mask`; the unconditional
  input for classifier-free guidance is the same for the empty prompt "";
- the UNet works at `sample_size`×`sample_size` with `pixel_shuffle`² × 3 channels: the 64×64 RGB image
  in [-1, 1] folded space-to-depth (`F.pixel_unshuffle(image, 4)`: 16×16×48), so it sees every pixel at a
  sixteenth of the positions (the cost of a 16×16 UNet, no autoencoder to train, nothing lost to
  upsampling); `F.pixel_shuffle(sample, 4)` gives the image back;
- flow matching (rectified flow): x_σ = (1 - σ)·image + σ·noise at timestep σ·1000; the UNet predicts
  the clean sample ("prediction": "sample"), and the velocity noise - image that the scheduler's Euler
  step takes is (x_σ - prediction) / σ (guidance is the same on either);
- sampling starts from `torch.randn((1, 48, 16, 16), generator=torch.Generator().manual_seed(seed))`
  (float32, on the CPU) and takes the scheduler's Euler steps from σ=1 to 0 with guidance
  v = v_uncond + g·(v_cond - v_uncond).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.text import TextTower

GENERATOR_DIR = Path(__file__).resolve().parent / "weights" / "generator"
CLASS_NAME = "MmserveTextToImage"
UNCOND_PROMPT = ""


@dataclass(frozen=True)
class GeneratorIndex:
    """`model_index.json`: everything a loader needs besides the UNet's and the scheduler's own configs."""

    sample_size: int = 16  # the UNet's spatial size
    output_size: int = 64  # the image's side after `pixel_shuffle`
    # the UNet's samples are the image folded space-to-depth: 3 * pixel_shuffle**2 channels at sample_size;
    # F.pixel_shuffle(sample, pixel_shuffle) unfolds one into the output_size image (no upsampling)
    pixel_shuffle: int = 4
    default_steps: int = 20  # scheduler steps
    default_guidance_scale: float = 4.0
    max_text_tokens: int = 64  # prompts keep their first tokens ([CLS] and [SEP] included)
    text_attention_mask: bool = True  # the prompt's mask goes to the UNet's cross-attention (encoder_attention_mask)
    _class_name: str = CLASS_NAME
    text_encoder: str = "builtin-minilm"  # all-MiniLM-L6-v2's last hidden state (model.text.TextTower)
    uncond_prompt: str = UNCOND_PROMPT
    vae: str | None = None  # pixel space: no autoencoder
    # what the UNet's output is: "sample", the clean sample (velocity = (x - output) / σ, σ = t / 1000), or
    # "flow", the velocity noise - sample itself
    prediction: str = "sample"
    training: dict[str, Any] = field(default_factory=dict)  # how the weights were made (the stage's log)

    @classmethod
    def read(cls, folder: Path) -> GeneratorIndex:
        meta = json.loads((folder / "model_index.json").read_text())
        return cls(**{k: v for k, v in meta.items() if k in cls.__dataclass_fields__})

    def write(self, folder: Path) -> None:
        (folder / "model_index.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def unet_config(
    sample_size: int = 16,
    channels: tuple[int, ...] = (64, 128, 128),
    pixel_shuffle: int = 4,
    attention_levels: int = 2,
    heads: int = 4,
) -> dict[str, Any]:
    """The UNet: ResNet blocks at every level, cross-attention to the prompt only at the `attention_levels`
    smallest ones (and in the middle), where attention is cheap on a CPU."""
    levels = len(channels)
    plain, attending = levels - attention_levels, attention_levels
    return {
        "sample_size": sample_size,
        "in_channels": 3 * pixel_shuffle**2,
        "out_channels": 3 * pixel_shuffle**2,
        "down_block_types": ("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * attending,
        "up_block_types": ("CrossAttnUpBlock2D",) * attending + ("UpBlock2D",) * plain,
        "block_out_channels": channels,
        "layers_per_block": 2,
        "cross_attention_dim": 384,  # MiniLM's width
        "attention_head_dim": heads,  # diffusers' name for the number of heads
        "norm_num_groups": min(32, channels[0]),
    }


def to_sample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] → the UNet's samples (B, 3·f², H/f, W/f)."""
    return F.pixel_unshuffle(images, factor) if factor > 1 else images


def to_images(samples: torch.Tensor, factor: int) -> torch.Tensor:
    """The UNet's samples → images (B, 3, H, W) in [-1, 1] (clamped)."""
    images = F.pixel_shuffle(samples, factor) if factor > 1 else samples
    return images.clamp(-1, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [-1, 1] → RGB PIL images (rounded to the nearest 8-bit value)."""
    pixels = ((images.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy())) for p in pixels]


def encode_prompts(tower: TextTower, prompts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → MiniLM's last hidden states (n, T, 384) and their masks (n, T), right-padded to the longest."""
    ids = [tower.tokenizer(p, truncation=True, max_length=max_tokens)["input_ids"] for p in prompts]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tower.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    device = next(tower.encoder.parameters()).device
    with torch.inference_mode():
        hidden = tower.encoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return hidden.clone(), mask.to(device)  # clone: usable outside inference mode (training)


def velocity(output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """The flow's velocity (noise - sample) from the UNet's output at timestep `t` (σ = t / 1000)."""
    if prediction == "flow":
        return output
    sigma = t.float() / 1000  # > 0 at every timestep the scheduler visits
    return (x.float() - output.float()) / sigma


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The starting sample of one request: float32 CPU noise from its own generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


class TextToImage:
    """The built-in generator: `generate(prompts, seeds)` → 64×64 RGB images."""

    def __init__(self, unet: Any, scheduler_config: dict[str, Any], index: GeneratorIndex, tower: TextTower) -> None:
        self.unet = unet.eval()
        self.scheduler_config = scheduler_config
        self.index = index
        self.tower = tower
        parameter = next(unet.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_pretrained(
        cls,
        folder: Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        tower: TextTower | None = None,
    ) -> TextToImage:
        from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

        folder = folder or GENERATOR_DIR
        unet = UNet2DConditionModel.from_pretrained(
            str(folder), subfolder="unet", torch_dtype=dtype, low_cpu_mem_usage=False
        ).to(device)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
        return cls(unet, dict(scheduler.config), GeneratorIndex.read(folder), (tower or TextTower()).to(device))

    def new_scheduler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (states, mask) for the UNet's cross-attention, in its dtype."""
        states, mask = encode_prompts(self.tower, prompts, self.index.max_text_tokens)
        return states.to(self.dtype), mask

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> list[Image.Image]:
        """One image per prompt, each from its own seed's noise; the same for a prompt alone or in a batch
        (up to float rounding of the batched matrix products)."""
        if not prompts:
            return []
        steps = steps or self.index.default_steps
        scale = self.index.default_guidance_scale if guidance_scale is None else guidance_scale
        n, size = len(prompts), self.index.sample_size
        channels = 3 * self.index.pixel_shuffle**2
        states, mask = self.encode([*prompts, *[UNCOND_PROMPT] * n])  # conditional rows, then unconditional
        x = torch.cat([initial_noise(s, (1, channels, size, size)) for s in seeds]).to(self.device, self.dtype)
        scheduler = self.new_scheduler()
        scheduler.set_timesteps(steps, device=self.device)
        for t in scheduler.timesteps:
            both = torch.cat([x, x])
            output = self.unet(both, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
            v = velocity(output, both, t, self.index.prediction)
            v_cond, v_uncond = v[:n], v[n:]
            v = v_uncond + scale * (v_cond - v_uncond)
            x = scheduler.step(v.float(), t, x.float()).prev_sample.to(self.dtype)
        return to_pil(to_images(x.float(), self.index.pixel_shuffle))
