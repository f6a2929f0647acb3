"""The `generate` stage of `mmserve train`: the built-in text-to-image generator, from scratch.

Every step draws a fresh batch of training scenes (seeds below the held-out range), folds each 64×64
image space-to-depth into 48×16×16, and trains the UNet by flow matching: for σ from a logit-normal
distribution (as Stable Diffusion 3 samples it), x_σ = (1 - σ)·image + σ·noise and the UNet, given σ·1000
and the caption's MiniLM token states, predicts the clean image (`flow_loss`). A tenth of the captions
are replaced by the empty prompt, so that the same UNet also gives the unconditional prediction that
classifier-free guidance needs. Scenes of more objects are drawn more often (`--object-weights`, 2 : 3 : 4 : 4
for one to four). AdamW at a constant rate after a linear warm-up, then a cosine down to zero over the last
`--decay-minutes` (80) of the `--max-minutes` budget (120); the shipped weights are an exponential moving
average of the trained ones. The defaults are the recipe of the shipped generator: one plain run.

The run is bounded by steps and by training time (`--max-minutes`, summed over resumed legs). Its
state is saved atomically every `checkpoint_every` steps under `--run-dir/generate/` and `--resume`
continues from it. Every `--eval-every-minutes` the averaged weights are exported to `--out` and judged by
the round trip (`model.generator_eval`) on a few held-out captions: the learning curve (round trip against
training minutes) goes into `model_index.json`'s "training" entry, and the model card.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.scenes import IMAGE_SIZE, MAX_OBJECTS, make_scene, render
from model.text import TextTower
from model.text_to_image import (
    GENERATOR_DIR,
    UNCOND_PROMPT,
    GeneratorIndex,
    TextToImage,
    encode_prompts,
    to_sample,
    unet_config,
)
from model.train.recipe import cosine_to_zero

logger = logging.getLogger("model.train")


@dataclass(frozen=True)
class GeneratorConfig:
    channels: tuple[int, ...] = (64, 128, 128)  # UNet widths per level (16×16, 8×8, 4×4)
    attention_levels: int = 2  # cross-attention at the last levels only (8×8 and 4×4) and in the middle
    sample_size: int = 16  # the UNet's side: 64×64 images folded 4×4 space-to-depth (48 channels)
    steps: int = 20_000  # an upper bound: `max_minutes` usually ends the run first
    max_minutes: float | None = 120.0  # training time budget, over resumed legs (evaluations not counted)
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 100
    decay_minutes: float = 80.0  # the rate follows a cosine to zero over the budget's last minutes (needs max_minutes)
    weight_decay: float = 0.0
    # what the UNet predicts: "sample" (the clean image; the velocity follows from it) or "flow" (the velocity)
    prediction: str = "sample"
    uncond_share: float = 0.1  # captions replaced by "" (classifier-free guidance)
    # relative weights of scenes with 1, 2, … objects; empty: make_scene's own draw (uniform counts)
    object_weights: tuple[float, ...] = (2.0, 3.0, 4.0, 4.0)
    ema_decay: float = 0.999  # the shipped weights: this average of the trained ones
    max_text_tokens: int = 64
    default_steps: int = 20  # sampling steps of the shipped model
    default_guidance_scale: float = 2.0  # bench.generator_guidance chose it
    checkpoint_every: int = 100
    eval_every_minutes: float = 20.0
    eval_captions: int = 100  # held-out captions per round-trip check (100 or more: recall among 100)
    seed: int = 0


def learning_rate(config: GeneratorConfig, step: int, warm_from: int, minutes: float) -> float:
    """The rate at `step`: a linear warm-up from `warm_from`, constant, then a cosine over the last minutes."""
    rate = config.lr * min(1.0, (step - warm_from + 1) / config.warmup_steps)
    if config.decay_minutes > 0 and config.max_minutes is not None:
        decay = min(config.decay_minutes, config.max_minutes)  # a short budget decays from its start
        into = (minutes - (config.max_minutes - decay)) / decay
        if into > 0:
            rate *= cosine_to_zero(into)
    return rate


def _factor(config: GeneratorConfig) -> int:
    """The space-to-depth factor that folds a scene image into the UNet's sample size."""
    return IMAGE_SIZE // config.sample_size


def batch_at(config: GeneratorConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    """Step `step`'s scenes: images (B, 3, 64, 64) in [-1, 1] and captions ("" for a share of them)."""
    rng = random.Random(f"{config.seed}:{step}")
    seeds = [s + config.seed * 1_000_003 for s in range(step * config.batch_size, (step + 1) * config.batch_size)]
    if config.object_weights:
        counts = random.Random(f"{config.seed}:{step}:objects").choices(
            range(1, len(config.object_weights) + 1), weights=config.object_weights, k=len(seeds)
        )
        scenes = [make_scene(s, min_objects=n, max_objects=n) for s, n in zip(seeds, counts, strict=True)]
    else:
        scenes = [make_scene(s) for s in seeds]
    pixels = np.stack([np.asarray(render(s), dtype=np.float32) for s in scenes])  # (B, 64, 64, 3)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1
    captions = [UNCOND_PROMPT if rng.random() < config.uncond_share else s.caption for s in scenes]
    return images, captions


def flow_loss(
    unet: Any, samples: torch.Tensor, states: torch.Tensor, mask: torch.Tensor, prediction: str = "sample"
) -> torch.Tensor:
    """Flow-matching loss of one batch at logit-normal σ.

    "flow": the UNet's output against the velocity noise - sample. "sample": the UNet's output is the clean
    sample (the velocity is then (x_σ - output) / σ), scored by its squared error weighted 1 / (σ² + 0.05):
    the velocity's error at high σ, capped near 20 at low σ, where 1/σ² would blow up.
    """
    sigma = torch.sigmoid(torch.randn(samples.shape[0]))
    noise = torch.randn_like(samples)
    s = sigma[:, None, None, None]
    noisy = (1 - s) * samples + s * noise
    output: torch.Tensor = unet(noisy, sigma * 1000, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    if prediction == "flow":
        return F.mse_loss(output, noise - samples)
    weight = 1 / (s**2 + 0.05)
    return (weight * (output - samples) ** 2).mean()


def export(unet: Any, config: GeneratorConfig, out: Path, training: dict[str, Any]) -> None:
    """The generator folder (fp16 UNet, scheduler, model_index.json), written beside `out` and swapped in."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    half = copy.deepcopy(unet).to(torch.float16)
    half.save_pretrained(str(tmp / "unet"), safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(str(tmp / "scheduler"))
    GeneratorIndex(
        sample_size=config.sample_size,
        output_size=IMAGE_SIZE,
        pixel_shuffle=_factor(config),
        default_steps=config.default_steps,
        default_guidance_scale=config.default_guidance_scale,
        max_text_tokens=config.max_text_tokens,
        prediction=config.prediction,
        training=training,
    ).write(tmp)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def train_generator(
    config: GeneratorConfig,
    out: Path,
    run_dir: Path,
    resume: bool,
    tower: TextTower | None = None,
    init_from: Path | None = None,
) -> Path:
    """Train (or go on training) the generator; its folder ends up in `out`."""
    from diffusers import UNet2DConditionModel

    from model.checkpoint import load_builtin
    from model.generator_eval import held_out_scenes, round_trip

    torch.manual_seed(config.seed)
    unet = UNet2DConditionModel(
        **unet_config(config.sample_size, config.channels, _factor(config), config.attention_levels)
    )
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tower = tower or TextTower()
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "train_state.pt"
    start, minutes_before, curve = 0, 0.0, []
    warm_from = 0  # the step the learning rate warms up from: a fresh optimizer warms up again
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start, minutes_before, curve = state["step"], state["minutes"], state["curve"]
        torch.set_rng_state(state["rng"])
        logger.info("resumed from %s at step %d (%.1f minutes trained)", state_path, start, minutes_before)
    elif init_from is not None:
        start, minutes_before, curve = _init_from(init_from, unet, ema)
        warm_from = start
        logger.info("continuing %s from step %d (%.1f minutes trained)", init_from, start, minutes_before)
    n_params = sum(p.numel() for p in unet.parameters())
    logger.info("training the generator (%.2fM parameters) for %d steps", n_params / 1e6, config.steps)

    def training_log(step: int, minutes: float) -> dict[str, Any]:
        return {
            **asdict(config),
            "steps_done": step,
            "minutes": round(minutes, 1),
            "threads": torch.get_num_threads(),
            "parameters": n_params,
            "curve": curve,
        }

    captioner = None
    eval_scenes = held_out_scenes(config.eval_captions)
    leg_started = time.time()
    evaluating = 0.0  # seconds of this leg spent on round-trip checks, not counted as training
    last_eval = minutes_before
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="generate", mininterval=10)
    unet.train()
    step = start
    for step in progress:
        minutes = minutes_before + (time.time() - leg_started - evaluating) / 60
        if config.max_minutes is not None and minutes >= config.max_minutes:
            logger.info("stopping at step %d: the %.0f-minute budget is spent", step, config.max_minutes)
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, warm_from, minutes)
        images, captions = batch_at(config, step)
        states, mask = encode_prompts(tower, captions, config.max_text_tokens)
        loss = flow_loss(unet, to_sample(images, _factor(config)), states, mask, config.prediction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        if step % 10 == 0:
            progress.set_postfix({"loss": f"{loss.item():.4f}", "min": f"{minutes:.1f}"}, refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0:
            save_state(state_path, unet, ema, optimizer, done, minutes, curve)
        if minutes - last_eval >= config.eval_every_minutes:
            began = time.time()
            captioner = captioner or load_builtin(text_tower=tower)
            metrics = _check(ema, config, out, training_log(done, minutes), captioner, eval_scenes, tower, round_trip)
            curve.append({"step": done, "minutes": round(minutes, 1), **{k: round(v, 4) for k, v in metrics.items()}})
            save_state(state_path, unet, ema, optimizer, done, minutes, curve)
            last_eval = minutes
            evaluating += time.time() - began
    else:
        step = config.steps
    minutes = minutes_before + (time.time() - leg_started - evaluating) / 60
    if step > start or not (out / "model_index.json").exists():
        save_state(state_path, unet, ema, optimizer, step, minutes, curve)
        captioner = captioner or load_builtin(text_tower=tower)
        metrics = _check(ema, config, out, training_log(step, minutes), captioner, eval_scenes, tower, round_trip)
        if not curve or curve[-1]["step"] != step:
            curve.append({"step": step, "minutes": round(minutes, 1), **{k: round(v, 4) for k, v in metrics.items()}})
        save_state(state_path, unet, ema, optimizer, step, minutes, curve)
        export(ema, config, out, training_log(step, minutes))
    logger.info("trained %d steps in %.1f minutes (%.1f this leg)", step, minutes, minutes - minutes_before)
    return out


def _init_from(folder: Path, unet: Any, ema: Any) -> tuple[int, float, list[dict[str, Any]]]:
    """Load an exported generator's averaged weights into both nets; its step, minutes and curve go on.

    For going on where only the shipped folder is left (the run state is not committed): the optimizer
    starts fresh, so the leg warms up again; the folder's UNet is the average, so the trained weights
    restart from it.
    """
    from diffusers import UNet2DConditionModel

    trained = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=torch.float32)
    unet.load_state_dict(trained.state_dict())
    ema.load_state_dict(trained.state_dict())
    training = GeneratorIndex.read(folder).training or {}
    return int(training.get("steps_done", 0)), float(training.get("minutes", 0.0)), list(training.get("curve", []))


def _check(
    ema: Any,
    config: GeneratorConfig,
    out: Path,
    training: dict[str, Any],
    captioner: Any,
    scenes: list[Any],
    tower: TextTower,
    round_trip: Any,
) -> dict[str, float]:
    """Export the averaged weights and judge them by the round trip on the held-out `scenes`."""
    export(ema, config, out, training)
    generator = TextToImage.from_pretrained(out, tower=tower)
    metrics: dict[str, float] = round_trip(generator, captioner, scenes)
    logger.info(
        "step %d (%.1f min): %s",
        training["steps_done"],
        training["minutes"],
        " ".join(f"{k}={v:.3f}" for k, v in metrics.items()),
    )
    return metrics


def save_state(
    path: Path,
    unet: Any,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    step: int,
    minutes: float,
    curve: list[dict[str, Any]],
) -> None:
    from model.checkpoint import atomic_write

    state = {
        "unet": unet.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "minutes": minutes,
        "curve": curve,
        "rng": torch.get_rng_state(),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 32,64,128, not {text!r}") from None


def _object_weights(text: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        weights = ()
    if not 1 <= len(weights) <= MAX_OBJECTS or any(w < 0 for w in weights) or not any(weights):
        raise argparse.ArgumentTypeError(
            f"expected 1 to {MAX_OBJECTS} non-negative weights of 1, 2, … objects, like 2,3,4,4, not {text!r}"
        )
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmserve train --stage generate", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--stage", choices=["generate"], required=True)
    parser.add_argument("--out", type=Path, default=GENERATOR_DIR, help="where the generator folder goes")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="resumable state (in generate/)")
    parser.add_argument("--resume", action="store_true", help="continue from --run-dir's state")
    parser.add_argument(
        "--init-from", type=Path, default=None, help="without run state: go on from this exported generator folder"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    defaults = GeneratorConfig()
    for name in (
        "seed",
        "steps",
        "batch_size",
        "lr",
        "warmup_steps",
        "checkpoint_every",
        "eval_captions",
        "sample_size",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)), default=None)
    for name in ("max_minutes", "decay_minutes", "eval_every_minutes", "default_guidance_scale"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None)
    parser.add_argument("--default-steps", type=int, default=None, help="sampling steps of the exported model")
    parser.add_argument("--channels", type=_channels, default=None, help="UNet widths, e.g. 32,64,128")
    parser.add_argument(
        "--object-weights",
        type=_object_weights,
        default=None,
        help="relative weights of training scenes with 1, 2, … objects, e.g. 2,3,4,4 (default: uniform)",
    )
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in GeneratorConfig.__dataclass_fields__ and v is not None}
    config = replace(defaults, **given)
    if config.decay_minutes > 0 and config.max_minutes is None:
        parser.error("--decay-minutes counts back from the end of --max-minutes: give both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    train_generator(config, args.out, args.run_dir / "generate", args.resume, init_from=args.init_from)
    logger.info("finished in %.1f minutes; the generator is in %s", (time.time() - started) / 60, args.out)
