"""Train the built-in model from scratch on synthetic scenes: `python -m model.train` / `mmserve train`.

Every step draws a fresh batch of scenes (seeds below the held-out range), and trains three things at
once on the same image encoding:
- captioning: the decoder reads `[BOS]` and writes the canonical caption;
- VQA: the decoder reads `[BOS] question [SEP]` and writes the one-word answer (loss on what it writes
  only); for the families in `scratchpad`, the answer comes after a scratchpad and a second `[SEP]`
  (a position answer after the two objects' columns and their relation, a colour answer after the
  object's column, an existence answer after the matching object's column or "zero");
- locked-text contrastive tuning: the image projection is pulled towards the frozen MiniLM embedding of
  the scene's caption (symmetric InfoNCE with soft labels, since two scenes can share a caption).

The shipped model comes from a recipe of three stages, which `mmserve train` runs one after the other:
- `base`: everything from scratch, every question family equally often, one-word answers; a curriculum
  raises the number of objects per scene over the first third of the stage;
- `position`: from the base weights, full scenes, position questions four times as often and written
  with the scratchpad, at half the learning rate;
- `colour`: colour questions four times as often (position twice), both with the scratchpad, so that
  "what colour is the square?" reuses the look-up of an object's column that position questions taught.

Each stage checkpoints its state atomically every few hundred steps under `--run-dir/<stage>/` and
`--resume` continues from it (a finished stage is not trained again); each stage's weights go to
`--run-dir/<stage>/weights` and the next stage starts from them; the last stage writes the finished model
to `--out`, as a shipping checkpoint (safetensors + config + tokenizer). `--stage` runs one stage alone,
with its settings open to the command line.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.checkpoint import WEIGHTS_DIR, save_checkpoint
from model.config import PRESETS
from model.evaluate import quick_eval
from model.multimodal import MultimodalTransformer
from model.scenes import HELD_OUT_SEED_START, MAX_OBJECTS, ask_any, make_scene, render
from model.text import TextTower
from model.tokenizer import BOS, EOS, PAD, SEP, build_tokenizer

logger = logging.getLogger("model.train")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "base"
    steps: int = 3400
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.02  # cosine decay ends at lr * this
    schedule_steps: int | None = None  # the cosine is planned for this many steps (default: `steps`)
    warmup_steps: int = 200
    weight_decay: float = 0.05
    contrastive_weight: float = 0.5
    questions_per_image: int = 3  # VQA rows per image and step (each image is encoded once for all)
    family_weights: tuple[tuple[str, float], ...] = ()  # favour some question families (empty: uniform)
    # families whose answers come after what `Question.scratchpad` says (objects' columns, relation)
    scratchpad: tuple[str, ...] = ()
    seed: int = 0
    eval_every: int = 500  # steps between quick held-out checks (per-attribute accuracy in the log)
    checkpoint_every: int = 200
    eval_scenes: int = 200  # held-out scenes per quick check (at least 100: recall is among 100)
    # curriculum: fraction of training done → most objects per scene
    curriculum: tuple[tuple[float, int], ...] = ((0.06, 1), (0.15, 2), (0.3, 3), (1.0, 4))


# what the stages after the first share: half the base learning rate, a short warm-up, and full scenes
# from the first step (the base stage has been through the curriculum already)
_FROM_BASE = {"lr": 5e-4, "warmup_steps": 30, "eval_every": 350, "curriculum": ((1.0, MAX_OBJECTS),)}

# The shipped recipe: its stages in order, each a full TrainConfig (`TrainConfig()` is the base stage).
STAGES: dict[str, TrainConfig] = {
    "base": TrainConfig(),
    "position": TrainConfig(
        steps=1400,
        schedule_steps=2000,  # stops before the cosine anneals: the colour stage goes on at full rate
        scratchpad=("position",),
        family_weights=(("position", 4.0),),
        **_FROM_BASE,
    ),
    "colour": TrainConfig(
        steps=700,
        scratchpad=("position", "colour"),
        family_weights=(("colour", 4.0), ("position", 2.0)),
        **_FROM_BASE,
    ),
}


def max_objects_at(config: TrainConfig, step: int) -> int:
    progress = step / config.steps
    return next(n for until, n in config.curriculum if progress < until or until >= 1.0)


def lr_at(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    planned = config.schedule_steps or config.steps
    progress = (step - config.warmup_steps) / max(1, planned - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


class Batches:
    """Deterministic training batches: step `s` always gives the same scenes and questions."""

    def __init__(self, config: TrainConfig, tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.tokenizer = tokenizer
        self.ids = {t: tokenizer.token_to_id(t) for t in (PAD, BOS, EOS, SEP)}

    def __call__(self, step: int) -> dict[str, torch.Tensor | list[str]]:
        B = self.config.batch_size
        base = (self.config.seed * 1_000_003 + step * B) % (HELD_OUT_SEED_START - B)
        rng = random.Random(base)
        most = max_objects_at(self.config, step)
        scenes = [make_scene(base + i, max_objects=most) for i in range(B)]
        size = PRESETS[self.config.preset].vision.image_size
        pixels = torch.stack([_to_tensor(render(s, size)) for s in scenes])
        # question-major order, so row blocks line up with the images: [q0 of all images, q1 of all, ...]
        weights = dict(self.config.family_weights) or None
        questions = [ask_any(s, rng, weights=weights) for _ in range(self.config.questions_per_image) for s in scenes]
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
        bos, eos, sep = self.ids[BOS], self.ids[EOS], self.ids[SEP]
        rows, loss_from = [], []
        for scene in scenes:
            rows.append([bos, *encode(scene.caption), eos])
            loss_from.append(1)
        for q in questions:
            prompt = [bos, *encode(q.text), sep]
            scratchpad = [*encode(q.scratchpad), sep] if q.scratchpad and q.family in self.config.scratchpad else []
            rows.append([*prompt, *scratchpad, *encode(q.answer), eos])
            loss_from.append(len(prompt))
        T = max(len(r) for r in rows)
        seq = torch.full((len(rows), T), self.ids[PAD], dtype=torch.long)
        weight = torch.zeros(len(rows), T - 1)
        for i, (row, start) in enumerate(zip(rows, loss_from, strict=True)):
            seq[i, : len(row)] = torch.tensor(row)
            weight[i, start - 1 : len(row) - 1] = 1.0  # targets seq[:, 1:] from the first answer token
        return {"pixels": pixels, "seq": seq, "weight": weight, "captions": [s.caption for s in scenes]}


def _to_tensor(image) -> torch.Tensor:  # type: ignore[no-untyped-def]
    from model.images import to_pixels

    return to_pixels([image], image.size[0])[0]


def losses(module: MultimodalTransformer, batch: dict, text_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Captioning + VQA cross-entropy on one decoder pass, and the locked-text contrastive loss."""
    embedding, tokens = module.encode_image(batch["pixels"])
    seq, weight = batch["seq"], batch["weight"]
    n_images = tokens.shape[0]
    context = tokens.repeat(seq.shape[0] // n_images, 1, 1)  # captions first, then questions
    inputs = seq[:, :-1]
    T = inputs.shape[1]
    positions = torch.arange(T).expand_as(inputs)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]  # right padding: causal is enough
    logits = module.decoder(inputs, positions, causal, context)  # (2B, T, V)
    token_loss = F.cross_entropy(logits.transpose(1, 2), seq[:, 1:], reduction="none")  # (2B, T)
    caption_w, answer_w = weight[:n_images], weight[n_images:]
    caption_loss = (token_loss[:n_images] * caption_w).sum() / caption_w.sum()
    answer_loss = (token_loss[n_images:] * answer_w).sum() / answer_w.sum()

    captions = batch["captions"]
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    soft = same / same.sum(1, keepdim=True)
    scale = module.logit_scale.exp().clamp(max=100)
    sims = scale * embedding @ text_embeddings.T  # (B, B)
    contrastive = (F.cross_entropy(sims, soft) + F.cross_entropy(sims.T, soft)) / 2
    align = (1 - (embedding * text_embeddings).sum(-1)).mean()
    return {"caption": caption_loss, "answer": answer_loss, "contrastive": contrastive, "align": align}


def save_state(path: Path, module, optimizer, step: int, config: TrainConfig) -> None:  # type: ignore[no-untyped-def]
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {"module": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": asdict(config)},
        tmp,
    )
    os.replace(tmp, path)


def train(
    config: TrainConfig, out: Path, run_dir: Path, resume: bool, init: Path | None = None
) -> MultimodalTransformer:
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = build_tokenizer()
    module = MultimodalTransformer(PRESETS[config.preset]).to(device)
    if init is not None:  # fine-tune: start from a shipping checkpoint's weights (fresh optimizer)
        from model.checkpoint import load_module

        module.load_state_dict(load_module(init)[0].state_dict())
        logger.info("initialised from %s", init)
    text_tower = TextTower().to(device)
    decay = [p for n, p in module.named_parameters() if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in module.named_parameters() if p.dim() < 2 or "emb" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
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
        batch = batches(step)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        text_embeddings = text_tower(batch["captions"]).clone().to(device)  # out of inference mode
        parts = losses(module, batch, text_embeddings)
        loss = parts["caption"] + parts["answer"] + config.contrastive_weight * (parts["contrastive"] + parts["align"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
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


def _families(text: str) -> tuple[str, ...]:
    """`position,colour` → ("position", "colour"), for `--scratchpad`."""
    from model.scenes import QUESTION_FAMILIES

    families = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in families if f not in QUESTION_FAMILIES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown question family {unknown[0]!r}: one of {', '.join(QUESTION_FAMILIES)}"
        )
    return families


def _family_weight(text: str) -> tuple[str, float]:
    """`position=4` → ("position", 4.0), for `--family-weight`."""
    family, _, weight = text.partition("=")
    try:
        return family, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FAMILY=WEIGHT, e.g. position=4, not {text!r}") from None


# the TrainConfig fields that one stage's command-line flags set (`--family-weight` → family_weights)
_STAGE_FIELDS = (
    "preset",
    "steps",
    "schedule_steps",
    "batch_size",
    "lr",
    "questions_per_image",
    "warmup_steps",
    "scratchpad",
    "family_weights",
)


class Stage(NamedTuple):
    name: str
    config: TrainConfig
    init: Path | None  # the weights it starts from (None: from scratch)
    out: Path  # where its weights go
    run_dir: Path  # its resumable state


@dataclass(frozen=True)
class Plan:
    """What `mmserve train` will do: its stages in order."""

    stages: tuple[Stage, ...]
    resume: bool
    threads: int | None


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(prog="mmserve train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stage", choices=list(STAGES), default=None, help="run this stage alone (default: every stage, in order)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=None, help="steps between held-out quick checks")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the finished model goes")
    parser.add_argument(
        "--run-dir", type=Path, default=Path("runs/train"), help="resumable state, one folder per stage"
    )
    parser.add_argument("--resume", action="store_true", help="continue from --run-dir's state")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    one = parser.add_argument_group("one stage's settings (with --stage; defaults: the recipe's)")
    one.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    one.add_argument("--preset", default=None, choices=sorted(PRESETS))
    one.add_argument("--steps", type=int, default=None)
    one.add_argument(
        "--schedule-steps", type=int, default=None, help="plan the cosine for this many steps (default: --steps)"
    )
    one.add_argument("--batch-size", type=int, default=None)
    one.add_argument("--lr", type=float, default=None)
    one.add_argument("--questions-per-image", type=int, default=None)
    one.add_argument("--warmup-steps", type=int, default=None)
    one.add_argument(
        "--scratchpad",
        type=_families,
        default=None,
        metavar="FAMILIES",
        help="comma-separated families whose answers come after a scratchpad, e.g. position,colour ('' for none)",
    )
    one.add_argument(
        "--family-weight",
        dest="family_weights",
        action="append",
        default=None,
        type=_family_weight,
        metavar="FAMILY=WEIGHT",
        help="ask this question family more (or less) often, e.g. position=3 (repeatable)",
    )
    args = parser.parse_args(argv)
    given = {field: getattr(args, field) for field in _STAGE_FIELDS if getattr(args, field) is not None}
    if args.stage is None and (given or args.init is not None):
        flag_of = {action.dest: action.option_strings[0] for action in one._group_actions}
        named = sorted(flag_of[field] for field in [*given, *(["init"] if args.init else [])])
        parser.error(f"{', '.join(named)} set one stage's settings: add --stage {' or --stage '.join(STAGES)}")
    if "family_weights" in given:
        given["family_weights"] = tuple(given["family_weights"])
    common = {"seed": args.seed, **({"eval_every": args.eval_every} if args.eval_every else {})}
    order = list(STAGES)
    stages = []
    for name in [args.stage] if args.stage else order:
        config = replace(STAGES[name], **common, **(given if args.stage else {}))
        init = args.init if args.stage else None
        previous = order[order.index(name) - 1] if name != order[0] else None
        if previous and init is None:  # from the previous stage's weights
            init = args.run_dir / previous / "weights"
            if args.stage and not (init / "config.json").exists():
                parser.error(
                    f"--stage {name} starts from the {previous} stage's weights, not found in {init}: "
                    f"run --stage {previous} first, or give --init"
                )
        out = args.out if name == order[-1] else args.run_dir / name / "weights"
        stages.append(Stage(name, config, init, out, args.run_dir / name))
    return Plan(stages=tuple(stages), resume=args.resume, threads=args.threads)


def main(argv: list[str] | None = None) -> None:
    plan = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if plan.threads:
        torch.set_num_threads(plan.threads)
    started = time.time()
    for stage in plan.stages:
        logger.info("stage %s: %d steps, writing %s", stage.name, stage.config.steps, stage.out)
        train(stage.config, stage.out, stage.run_dir, plan.resume, init=stage.init)
    logger.info("finished in %.1f minutes; the model is in %s", (time.time() - started) / 60, plan.stages[-1].out)


if __name__ == "__main__":
    main()
