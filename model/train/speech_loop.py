"""The speech stage: an audio tower joins a trained image model, and the shared decoder learns to transcribe.

It starts from the previous stage's weights (`init`), adds a fresh audio tower (the `base+audio` preset), and
freezes the image encoder and its embedding projection, so image embeddings stay exactly as they were. Each
step trains on `audio_batch_size` spoken sentences from the pool (`model.train.speech`, synthesised once into
`run_dir/pool`, read in batches of similar lengths) and replays `batch_size` scenes' captions and questions,
so the decoder keeps what it knew. The audio tower learns at `lr`, the decoder at `lr * decoder_lr_ratio`. An
auxiliary CTC loss on the audio tokens (weight `ctc_weight`, through a linear head that exists only in
training) makes the alignment of sound to words learn sooner. Quick checks report the word error rate on held-
out sentences, in training voices and in held-out voices, and the image metrics.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model.audio import pad_features
from model.checkpoint import atomic_write, load_module, save_checkpoint
from model.config import PRESETS
from model.devices import resolve_device
from model.evaluate import quick_eval, word_error_rate
from model.multimodal import BuiltinModel, MultimodalTransformer
from model.text import TextTower
from model.tokenizer import BOS, EOS, PAD
from model.train.data import Batches, to_device, token_id
from model.train.objective import decoder_losses, speech_losses
from model.train.recipe import TrainConfig, lr_at
from model.train.spec_augment import spec_augment, warp_frequencies
from model.train.speech import condition_utterances, eval_utterances, synthesise
from model.train.speech_pool import Variety, build_pool, length_batches, load_pool

logger = logging.getLogger("model.train")


def speech_module(config: TrainConfig, trained: MultimodalTransformer, init: Path) -> MultimodalTransformer:
    """The image model `trained` (loaded from `init`) with a fresh audio tower, its image encoder frozen."""
    preset = PRESETS[config.preset]
    if preset.audio is None:
        raise ValueError(f"the speech stage needs a preset with an audio tower, not {config.preset!r}")
    module = MultimodalTransformer(replace(trained.config, audio=preset.audio))
    missing, unexpected = module.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or any(not key.startswith("audio.") for key in missing):
        raise ValueError(f"{init} does not fit the speech stage: missing {missing}, unexpected {unexpected}")
    for part in (module.vision, module.image_proj):
        part.requires_grad_(False)
    module.logit_scale.requires_grad_(False)
    return module


def make_optimizer(module: MultimodalTransformer, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the audio tower (at `lr`) and the decoder (at `lr * decoder_lr_ratio`); no decay on
    embeddings, norms and biases. Each group's `scale` multiplies the scheduled rate."""
    assert module.audio is not None
    groups = []
    for part, scale in ((module.audio, 1.0), (module.decoder, config.decoder_lr_ratio)):
        named = [(n, p) for n, p in part.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if p.dim() >= 2 and "emb" not in n]
        no_decay = [p for n, p in named if p.dim() < 2 or "emb" in n]
        groups += [
            {"params": decay, "weight_decay": config.weight_decay, "scale": scale},
            {"params": no_decay, "weight_decay": 0.0, "scale": scale},
        ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


CTC_HEAD_ALONE = 200  # steps a fresh CTC head over a tower that already hears learns alone
QUICK_CONDITIONS = ("telephone", "fast_240wpm", "babble_10db", "other_voices", "flite_held_out_voice")  # quick checks


def eval_sets(
    run_dir: Path, sampling_rate: int, n: int, varied: bool = False
) -> dict[str, tuple[list[str], list[Any]]]:
    """The held-out sentences in training voices and in held-out voices, and (`varied`) a quarter as many under
    each of `QUICK_CONDITIONS` and out-of-domain clips (transcript ""), synthesised once (cached)."""
    path = run_dir / "eval_audio.pt"
    if path.exists():
        sets: dict[str, tuple[list[str], list[Any]]] = torch.load(path, weights_only=False)
        return sets
    sets = {}
    voices = (("train_voices", False), ("held_out_voices", True))
    named = [(name, eval_utterances(held_out, n)) for name, held_out in voices]
    if varied:
        named += [(name, condition_utterances(name, n // 4)) for name in QUICK_CONDITIONS]
    for name, utterances in named:
        sets[name] = ([u.text for u in utterances], [synthesise(u, sampling_rate, i) for i, u in enumerate(utterances)])
    if varied:
        from model.refusal_eval import OUT_OF_DOMAIN, out_of_domain_clips

        clips = [c for category in OUT_OF_DOMAIN for c in out_of_domain_clips(category, max(1, n // 20))]
        sets["out_of_domain"] = ([""] * len(clips), clips)
    atomic_write(path, lambda tmp: torch.save(sets, tmp))
    return sets


def speech_eval(
    module: MultimodalTransformer, tokenizer: Any, text_tower: TextTower, sets: dict[str, tuple[list[str], list[Any]]]
) -> dict[str, float]:
    model = BuiltinModel(module, tokenizer, text_tower)
    metrics = {}
    for name, (texts, audios) in sets.items():
        heard = [text for i in range(0, len(audios), 32) for text in model.transcribe(audios[i : i + 32])]
        blank = sum(not h.strip() for h in heard) / max(1, len(heard))
        if name == "out_of_domain":  # transcribed as nothing: what the spoken /vqa refuses
            metrics["blank_out_of_domain"] = blank
        else:
            metrics[f"wer_{name}"] = word_error_rate(texts, heard)
            if name == "held_out_voices":
                metrics["blank_held_out_voices"] = blank
    return metrics


def train_speech(
    config: TrainConfig, out: Path, run_dir: Path, resume: bool, init: Path | None
) -> MultimodalTransformer:
    if init is None:
        raise ValueError("the speech stage starts from a trained image model: give --init")
    torch.manual_seed(config.seed)
    device = resolve_device("auto")
    trained, tokenizer, _ = load_module(init)  # read once: the weights and the tokenizer
    module = speech_module(config, trained, init).to(device)
    # a tower that already hears (the hearing stage) gets a fresh CTC head: for its first `CTC_HEAD_ALONE`
    # steps the head learns alone, so that its first, wild gradients do not undo what the tower knows
    tower_trained = trained.audio is not None
    assert module.config.audio is not None
    text_tower = TextTower().to(device)
    optimizer = make_optimizer(module, config)
    ctc_head = torch.nn.Linear(module.config.vision.dim, module.config.decoder.vocab_size + 1).to(device)
    ctc_optimizer = torch.optim.AdamW(ctc_head.parameters(), lr=config.lr, betas=(0.9, 0.98))
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "train_state.pt"
    start = 0
    if resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        if "ctc_head" in state:  # (a state saved before the CTC loss existed starts the head afresh)
            ctc_head.load_state_dict(state["ctc_head"])
            ctc_optimizer.load_state_dict(state["ctc_optimizer"])
        start = state["step"]
        logger.info("resumed from %s at step %d", state_path, start)

    pool_dir = run_dir / "pool"
    if not (pool_dir / "done").exists():
        began = time.time()
        variety = Variety(config.speech_varied, config.out_of_domain_share)
        # a stage trained with another --seed hears other utterances (seeds stay below the held-out range)
        first = config.seed * 1_000_000
        build_pool(pool_dir, config.speech_pool, module.config.audio, variety=variety, first_seed=first)
        (pool_dir / "done").write_text(f"{(time.time() - began) / 60:.1f} minutes\n")
    texts, features = load_pool(pool_dir)
    sets = eval_sets(run_dir, module.config.audio.sampling_rate, config.speech_eval, config.speech_varied)
    logger.info("speech pool: %d utterances (%s)", len(texts), (pool_dir / "done").read_text().strip())
    ids = {t: token_id(tokenizer, t) for t in (BOS, EOS, PAD)}
    rows = [[ids[BOS], *tokenizer.encode(t, add_special_tokens=False).ids, ids[EOS]] for t in texts]
    order = length_batches([f.shape[0] for f in features], config.audio_batch_size, random.Random(config.seed))
    for _ in range(start):  # the same batches as an uninterrupted run
        next(order)
    replay = Batches(config, tokenizer)
    masks = torch.Generator().manual_seed(config.seed + start)  # SpecAugment's draws

    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    logger.info("speech stage: %.2fM trainable parameters on %s, %d steps", trainable / 1e6, device, config.steps)
    started = time.time()
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="speech", mininterval=10)
    module.train()
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, step) * group["scale"]
        for group in ctc_optimizer.param_groups:
            group["lr"] = lr_at(config, step)
        picked = next(order)
        batch_features, lengths = pad_features([features[i].float() for i in picked])
        if config.vtlp_share:
            batch_features = warp_frequencies(batch_features, lengths, masks, config.vtlp_share)
        if config.speech_varied:
            batch_features = spec_augment(batch_features, lengths, masks)
        longest = max(len(rows[i]) for i in picked)
        seq = torch.full((len(picked), longest), ids[PAD], dtype=torch.long)
        for r, i in enumerate(picked):
            seq[r, : len(rows[i])] = torch.tensor(rows[i])
        speech = speech_losses(
            module,
            ctc_head,
            batch_features.to(device),
            lengths.to(device),
            seq.to(device),
            ids[PAD],
            ctc_reaches_tower=not tower_trained or step >= CTC_HEAD_ALONE,
        )
        images = to_device(replay(step), device)
        with torch.no_grad():
            _, tokens = module.encode_image(images["pixels"])
        parts = decoder_losses(module, tokens, images)
        loss = speech["heard"] + config.ctc_weight * speech["ctc"] + parts["caption"] + parts["answer"]
        optimizer.zero_grad(set_to_none=True)
        ctc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        ctc_optimizer.step()
        if step % 20 == 0:
            shown = {**speech, **parts}
            progress.set_postfix({k: f"{v.item():.3f}" for k, v in shown.items()}, refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            state = {
                "module": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ctc_head": ctc_head.state_dict(),
                "ctc_optimizer": ctc_optimizer.state_dict(),
                "step": done,
                "config": asdict(config),
            }
            atomic_write(state_path, lambda tmp: torch.save(state, tmp))  # noqa: B023 (called at once)
        if done % config.eval_every == 0 or done == config.steps:
            module.eval()
            metrics = {
                **speech_eval(module, tokenizer, text_tower, sets),
                **quick_eval(module, tokenizer, text_tower, n_scenes=config.eval_scenes),
            }
            module.train()
            minutes = (time.time() - started) / 60
            logger.info("step %d (%.1f min): %s", done, minutes, " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
            training = {
                **asdict(config),
                "steps_done": done,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "minutes": round(minutes, 1),
                "held_out_quick_eval": {k: round(v, 4) for k, v in metrics.items()},
            }
            save_checkpoint(module, tokenizer, out, name="mmserve-builtin", training=training)
    logger.info("trained %d speech steps in %.1f minutes", config.steps - start, (time.time() - started) / 60)
    return module
