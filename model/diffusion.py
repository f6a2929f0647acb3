"""Step-wise denoising: the serving state for text-to-image (`DenoiseState`), in the spirit of `DecodeState`.

A row is one image. `join` encodes the rows' prompts once (and the unconditional prompt, once per model,
for classifier-free guidance) and draws each row's initial noise from its own `torch.Generator` seeded with
its request's seed; `step` advances every row (or the rows asked for, the others waiting) by one denoising
step in ONE batched UNet call, each row at its own timestep (`UNet2DConditionModel` takes a timestep per row),
with its own guidance scale and its own scheduler instance, so rows with different step counts and guidance
share the batch. A finished row is decoded (through the VAE where there is one) and comes back as a PIL
image; `filter` drops rows.

Each row computes exactly what a diffusers pipeline computes for that image alone: the same text states,
the same noise (drawn in the same order from the same generator), the same `scale_model_input` /
`scheduler.step` calls with the same arguments; only the UNet's batch differs, which changes float
rounding, never the image beyond a level of 1/255 (`tests/model/test_diffusion_parity.py`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from model.api import ImageSpec, ImageUpdate

TextEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor | None]]  # → (n, L, D) states, (n, L) mask


@dataclass(frozen=True)
class DiffusionParts:
    """What a text-to-image model is made of, whichever family it comes from."""

    unet: Any  # an UNet2DConditionModel (diffusers' classes are untyped for mypy)
    scheduler: Any  # a diffusers scheduler (SchedulerMixin), the template: each row gets its own copy
    vae: Any  # an AutoencoderKL, or None for a model that denoises pixels
    encode_text: TextEncoder  # prompts → their text states (and a mask for the UNet's cross-attention, or None)
    uncond_prompt: str  # what classifier-free guidance contrasts with ("" as diffusers' pipelines do)
    image_processor: VaeImageProcessor  # [-1, 1] tensors → PIL images, as the pipeline post-processes them
    # Pixel models may denoise images folded space-to-depth (`F.pixel_unshuffle` by this factor: 3·f² channels
    # at 1/f the side); decoding unfolds them (`F.pixel_shuffle`). 1: not folded.
    pixel_shuffle: int = 1
    # Classifier-free guidance runs when guidance_scale > 1 (diffusers' pipelines); with `guide_below_one`
    # whenever it is not 1 (a scale below one then leans towards the unconditional prediction).
    guide_below_one: bool = False
    eta: float = 0.0  # DDIM's eta, as the pipeline's default
    # What the UNet predicts: "model" (what the scheduler steps with: noise, v or a flow's velocity, as
    # diffusers' pipelines take it), or "sample" (the clean sample, as the built-in generator does; turned into
    # the flow's velocity (x_σ - prediction) / σ for a flow-matching scheduler).
    prediction: str = "model"

    @property
    def vae_scale(self) -> int:
        """Image pixels per latent pixel, along one side (8 for Stable Diffusion; 1 without a VAE)."""
        if self.vae is None:
            return 1
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(C, h, w) of the tensor the UNet denoises for an image of `width` × `height`."""
        factor = self.vae_scale * self.pixel_shuffle
        return (self.unet.config.in_channels, height // factor, width // factor)

    def guides(self, guidance_scale: float) -> bool:
        """Whether a row runs classifier-free guidance (its unconditional pass)."""
        if self.unet.config.time_cond_proj_dim is not None:  # guidance embedded in the UNet (as the pipeline)
            return False
        return guidance_scale != 1 if self.guide_below_one else guidance_scale > 1


@dataclass
class _Row:
    spec: ImageSpec
    scheduler: Any  # its own instance of the model's scheduler class
    generator: torch.Generator  # its initial noise, then what a stochastic scheduler draws at each step
    latents: torch.Tensor  # (1, C, h, w)
    text: torch.Tensor  # (1 or 2, L, D): [unconditional, prompt] when guided, [prompt] otherwise
    mask: torch.Tensor | None  # (1 or 2, L) of the text states, or None
    done: int = 0  # steps taken

    @property
    def guided(self) -> bool:
        return self.text.shape[0] == 2

    @property
    def steps(self) -> int:
        return len(self.scheduler.timesteps)


class DenoiseState:
    """Up to `capacity` images denoising together; rows in order of arrival, each with its own request spec."""

    def __init__(self, parts: DiffusionParts, capacity: int, uncond: Callable[[], tuple[torch.Tensor, Any]]) -> None:
        """`uncond`: the unconditional prompt's text states and mask (computed once by the model, cached)."""
        self.parts = parts
        self.capacity = capacity
        self._uncond = uncond
        parameter = next(parts.unet.parameters())
        self._device = parameter.device
        step = inspect.signature(parts.scheduler.step).parameters
        self._takes_generator, self._takes_eta = "generator" in step, "eta" in step
        self._rows: list[_Row] = []

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self._rows)

    @property
    def specs(self) -> list[ImageSpec]:
        return [row.spec for row in self._rows]

    @torch.inference_mode()
    def join(self, specs: Sequence[ImageSpec]) -> None:
        """Append rows: prompts encoded in one pass; each row's noise from its own seed, its own scheduler."""
        if not specs:
            return
        if len(specs) > self.free:
            raise ValueError(f"{len(specs)} images do not fit in {self.free} free rows")
        states, masks = self.parts.encode_text([spec.prompt for spec in specs])
        template = self.parts.scheduler
        for i, spec in enumerate(specs):
            scheduler = type(template).from_config(template.config)
            scheduler.set_timesteps(spec.steps, device=self._device)
            generator = torch.Generator().manual_seed(spec.seed)
            shape = (1, *self.parts.latent_shape(spec.width, spec.height))
            noise = randn_tensor(shape, generator=generator, device=self._device, dtype=states.dtype)
            text, mask = states[i : i + 1], None
            if masks is not None:  # right-padded to the longest of this join: keep the row's own tokens
                length = int(masks[i].sum())
                text, mask = states[i : i + 1, :length], masks[i : i + 1, :length]
            if self.parts.guides(spec.guidance_scale):
                uncond_states, uncond_mask = self._uncond()
                text, mask = stack_text([uncond_states, text], [uncond_mask, mask])
            latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching has none: 1
            self._rows.append(_Row(spec, scheduler, generator, latents, text, mask))

    @torch.inference_mode()
    def step(self, rows: Sequence[int] | None = None) -> list[ImageUpdate]:
        """One denoising step for the rows `rows` (ascending; every row when None), the others left where they
        are: one UNet call per image size (one in all, usually); an update per row stepped, in that order.
        A row's step depends on nothing but the row, so stepping rows in turns makes the same image."""
        stepped = [self._rows[i] for i in (range(len(self._rows)) if rows is None else rows)]
        if any(row.done >= row.steps for row in stepped):
            raise RuntimeError("filter out finished rows before the next step")
        updates: list[ImageUpdate | None] = [None] * len(stepped)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, row in enumerate(stepped):
            groups.setdefault(tuple(row.latents.shape), []).append(index)
        for indices in groups.values():
            for index, update in zip(indices, self._step_group([stepped[i] for i in indices]), strict=True):
                updates[index] = update
        return [update for update in updates if update is not None]

    def filter(self, keep: Sequence[int]) -> None:
        """Keep the rows `keep` (ascending), which become rows 0, 1, ..."""
        self._rows = [self._rows[i] for i in keep]

    def _step_group(self, rows: list[_Row]) -> list[ImageUpdate]:
        """One step for rows of one latent shape: their inputs stacked, one UNet call, each its own update."""
        samples, timesteps, texts, masks = [], [], [], []
        for row in rows:
            t = row.scheduler.timesteps[row.done]
            sample = torch.cat([row.latents] * 2) if row.guided else row.latents  # (1 or 2, C, h, w)
            if hasattr(row.scheduler, "scale_model_input"):
                sample = row.scheduler.scale_model_input(sample, t)
            samples.append(sample)
            timesteps.append(t.reshape(1).expand(sample.shape[0]))
            texts.append(row.text)
            masks.append(row.mask)
        text, mask = stack_text(texts, masks)
        predicted = self.parts.unet(
            torch.cat(samples),  # (B, C, h, w): B = the rows, twice for guided ones
            torch.cat(timesteps),  # (B,): each row's own timestep
            encoder_hidden_states=text,  # (B, L, D)
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]
        finished: list[int] = []
        previews: list[tuple[int, torch.Tensor]] = []
        offset = 0
        for index, row in enumerate(rows):
            if row.guided:  # the pipeline's arithmetic, row by row
                uncond, cond = predicted[offset : offset + 2].chunk(2)
                noise = uncond + row.spec.guidance_scale * (cond - uncond)
                offset += 2
            else:
                noise = predicted[offset : offset + 1]
                offset += 1
            t = row.scheduler.timesteps[row.done]
            if self.parts.prediction == "sample":  # σ = t / T for flow matching, > 0 at every visited step
                sigma = float(t) / row.scheduler.config.num_train_timesteps
                noise = (row.latents.float() - noise.float()) / sigma
            output = row.scheduler.step(noise, t, row.latents, **self._step_kwargs(row), return_dict=True)
            row.done += 1
            if row.done == row.steps:
                finished.append(index)
            elif row.spec.preview_every and row.done % row.spec.preview_every == 0:
                previews.append((index, clean_estimate(row.scheduler, output, noise, t, row.latents)))
            row.latents = output.prev_sample
        images = self._decode([rows[i].latents for i in finished])
        shown = self._decode([estimate for _, estimate in previews])
        finals = dict(zip(finished, images, strict=True))
        early = dict(zip((i for i, _ in previews), shown, strict=True))
        return [
            ImageUpdate(row.done, row.steps, i in finals, finals.get(i), early.get(i)) for i, row in enumerate(rows)
        ]

    def _step_kwargs(self, row: _Row) -> dict[str, Any]:
        """What the pipeline passes to `scheduler.step` (`prepare_extra_step_kwargs`)."""
        kwargs: dict[str, Any] = {}
        if self._takes_eta:
            kwargs["eta"] = self.parts.eta
        if self._takes_generator:
            kwargs["generator"] = row.generator
        return kwargs

    def _decode(self, latents: list[torch.Tensor]) -> list[Image.Image]:
        """Denoised tensors → PIL images: the VAE's decoder where there is one, unfolded where folded."""
        if not latents:
            return []
        return decode_images(self.parts, torch.cat(latents))


def stack_text(texts: list[torch.Tensor], masks: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows' text states (k, L_i, D) → (B, L, D), and their masks → (B, L): right-padded to the longest when
    lengths differ, the padding masked out (a model with a mask; CLIP pads every prompt to one length)."""
    length = max(text.shape[1] for text in texts)
    if all(mask is not None for mask in masks):
        padded = [F.pad(text, (0, 0, 0, length - text.shape[1])) for text in texts]
        padded_masks = [F.pad(mask, (0, length - mask.shape[1])) for mask in masks if mask is not None]
        return torch.cat(padded), torch.cat(padded_masks)
    if any(text.shape[1] != length for text in texts):
        raise ValueError("text states of different lengths need their masks")
    return torch.cat(texts), None


def decode_images(parts: DiffusionParts, latents: torch.Tensor) -> list[Image.Image]:
    """(n, C, h, w) denoised tensors → n PIL images."""
    vae = parts.vae
    images = latents
    if vae is not None:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        images = vae.decode(latents / vae.config.scaling_factor + shift, return_dict=False)[0]
    if parts.pixel_shuffle > 1:
        images = F.pixel_shuffle(images.float(), parts.pixel_shuffle)  # (n, 3·f², h, w) → (n, 3, h·f, w·f)
    pil: Any = parts.image_processor.postprocess(images, output_type="pil", do_denormalize=[True] * images.shape[0])
    return list(pil)  # typed as one image, but a list of them for a batch


def clean_estimate(
    scheduler: Any, output: Any, noise: torch.Tensor, t: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """The model's current estimate of the clean image (x0) from one step, for previews.

    Most schedulers return it (`pred_original_sample`); for the others it is computed from the prediction:
    flow matching (x0 = x - σ v), else from the noise schedule and the prediction type.
    """
    estimate: torch.Tensor | None = getattr(output, "pred_original_sample", None)
    if estimate is not None:
        return estimate
    config = scheduler.config
    if "FlowMatch" in type(scheduler).__name__:
        flow: torch.Tensor = sample - float(t) / config.num_train_timesteps * noise  # sigma = t / T
        return flow
    alpha: torch.Tensor = scheduler.alphas_cumprod.to(sample.device)[int(t)]
    if config.get("prediction_type", "epsilon") == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * noise
    return (sample - (1 - alpha).sqrt() * noise) / alpha.sqrt()


def generate_all(state: DenoiseState, specs: Sequence[ImageSpec]) -> list[Image.Image]:
    """Run images to the end together (whole-request batching); images in order."""
    images: list[Image.Image | None] = [None] * len(specs)
    index = list(range(len(specs)))  # row → image
    state.join(specs)
    while index:
        updates = state.step()
        for i, update in zip(index, updates, strict=True):
            if update.finished:
                images[i] = update.image
        keep = [row for row, update in enumerate(updates) if not update.finished]
        state.filter(keep)
        index = [index[row] for row in keep]
    return [image for image in images if image is not None]
