"""One training stage: the optimiser, the step loop, resumable state, quick held-out checks, and the export."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from model.checkpoint import atomic_write, load_module, save_checkpoint
from model.config import PRESETS
from model.devices import resolve_device
from model.evaluate import quick_eval
from model.multimodal import MultimodalTransformer
from model.text import TextTower
from model.train.data import Batch, Batches, to_device
from model.train.objective import losses
from model.train.recipe import TrainConfig, lr_at, max_objects_at
from model.train.vocabulary import build_tokenizer

logger = logging.getLogger("model.train")


def save_state(
    path: Path, module: MultimodalTransformer, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig
) -> None:
    state = {"module": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": asdict(config)}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def make_optimizer(module: MultimodalTransformer, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW, with no weight decay on embeddings, norms and biases."""
    decay = [p for n, p in module.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in module.named_parameters() if p.dim() < 2 or "emb" in n]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )


def train_step(
    module: MultimodalTransformer,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    text_embeddings: torch.Tensor,
    config: TrainConfig,
) -> dict[str, torch.Tensor]:
    """One optimiser step on `batch` (on the module's device); returns the loss parts."""
    parts = losses(module, batch, text_embeddings)
    loss = parts["caption"] + parts["answer"] + config.contrastive_weight * (parts["contrastive"] + parts["align"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    return parts


def train(
    config: TrainConfig, out: Path, run_dir: Path, resume: bool, init: Path | None = None
) -> MultimodalTransformer:
    if config.speech_pool:
        from model.train.speech_loop import train_speech

        return train_speech(config, out, run_dir, resume, init)
    torch.manual_seed(config.seed)
    device = resolve_device("auto")
    tokenizer = build_tokenizer()
    module = MultimodalTransformer(PRESETS[config.preset]).to(device)
    if init is not None:  # fine-tune: start from a shipping checkpoint's weights (fresh optimizer)
        module.load_state_dict(load_module(init)[0].state_dict())
        logger.info("initialised from %s", init)
    text_tower = TextTower().to(device)
    optimizer = make_optimizer(module, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "train_state.pt"
    start = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        logger.info("resumed from %s at step %d", state_path, start)
    batches = Batches(config, tokenizer)
    n_params = sum(p.numel() for p in module.parameters())
    logger.info(
        "training %s (%.2fM parameters) on %s for %d steps", config.preset, n_params / 1e6, device, config.steps
    )
    started = time.time()
    progress = tqdm(
        range(start, config.steps), initial=start, total=config.steps, desc="train", mininterval=10, dynamic_ncols=True
    )
    module.train()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, step)
        batch = to_device(batches(step), device)
        text_embeddings = text_tower(batch["captions"]).clone().to(device)  # out of inference mode
        parts = train_step(module, optimizer, batch, text_embeddings, config)
        if step % 20 == 0:
            progress.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items()}, refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_state(state_path, module, optimizer, done, config)
        if done % config.eval_every == 0 or done == config.steps:
            module.eval()
            metrics = quick_eval(module, tokenizer, text_tower, n_scenes=config.eval_scenes)
            module.train()
            logger.info(
                "step %d (%.1f min, objects<=%d): %s",
                done,
                (time.time() - started) / 60,
                max_objects_at(config, step),
                " ".join(f"{k}={v:.3f}" for k, v in metrics.items()),
            )
            training = {
                **asdict(config),
                "steps_done": done,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "minutes": round((time.time() - started) / 60, 1),
                "held_out_quick_eval": {k: round(v, 4) for k, v in metrics.items()},
            }
            save_checkpoint(module, tokenizer, out, name="mmserve-builtin", training=training)
    if start >= config.steps and not (out / "config.json").exists():  # stopped between state and export
        save_checkpoint(
            module, tokenizer, out, name="mmserve-builtin", training={**asdict(config), "steps_done": start}
        )
    logger.info("trained %d steps in %.1f minutes", config.steps - start, (time.time() - started) / 60)
    return module
