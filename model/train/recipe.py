"""What a training stage is: its settings, its schedules (learning rate, curriculum), and the shipped stages."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from model.scenes import MAX_OBJECTS


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
    # The speech stage (model/train/speech_loop.py): spoken sentences from a pool synthesised once, and the
    # image tasks replayed beside them (`batch_size` scenes a step) so that the shared decoder keeps them.
    speech_pool: int = 0  # utterances in the pool; 0: not a speech stage
    audio_batch_size: int = 64  # utterances a step
    decoder_lr_ratio: float = 1.0  # the decoder's learning rate, as a fraction of `lr` (the audio tower's)
    speech_eval: int = 300  # held-out sentences in each quick check's two sets (training and held-out voices)
    ctc_weight: float = 0.3  # the auxiliary CTC loss on the audio tokens (its head is for training only)
    # the `hearing` stage: the wider variety of voices and listening conditions, SpecAugment, and a share of
    # audio that is not a scene sentence, to be transcribed as nothing
    speech_varied: bool = False
    out_of_domain_share: float = 0.0
    vtlp_share: float = 0.0  # of a step's utterances, spectra scaled along frequency (`warp_frequencies`)
    # this share of a step's scenes are ones where a position question names an object in three words ("is
    # the large red circle left of ...?"), asked first: rare among random scenes, and the hardest questions
    hard_position_share: float = 0.0


# what the stages after the first share: half the base learning rate, a short warm-up, and full scenes
# from the first step (the base stage has been through the curriculum already)
_FROM_BASE = TrainConfig(lr=5e-4, warmup_steps=30, eval_every=350, curriculum=((1.0, MAX_OBJECTS),))

# The shipped recipe: its stages in order, each a full TrainConfig (`TrainConfig()` is the base stage).
STAGES: dict[str, TrainConfig] = {
    "base": TrainConfig(),
    "position": replace(
        _FROM_BASE,
        steps=1400,
        schedule_steps=2000,  # stops before the cosine anneals: the colour stage goes on at full rate
        scratchpad=("position",),
        family_weights=(("position", 4.0),),
    ),
    "colour": replace(
        _FROM_BASE,
        steps=700,
        scratchpad=("position", "colour"),
        family_weights=(("colour", 4.0), ("position", 2.0)),
    ),
    # the built-in model hears: a new audio tower, and the decoder (at half the rate) learns to write what it
    # hears while it keeps captioning and answering (and existence answers get their scratchpad too);
    # the image encoder is frozen, so image embeddings do not change
    "speech": replace(
        _FROM_BASE,
        preset="base+audio",
        steps=2400,
        lr=1e-3,
        warmup_steps=150,
        batch_size=32,
        eval_every=400,
        scratchpad=("position", "colour", "exists"),
        family_weights=(("exists", 4.0), ("colour", 2.0), ("position", 2.0)),
        speech_pool=28_000,
        decoder_lr_ratio=0.5,
    ),
}
# Hearing more than the training voices (issue 23): from the speech stage's weights, on a pool with the wider
# variety of voices, speeds and listening conditions (`model.train.speech.varied_utterance`), vocal tract
# length perturbation and SpecAugment, audio that is not a scene sentence (`model.train.out_of_domain`)
# taught to be transcribed as nothing, and a quarter of the replayed scenes asking the hardest position questions
STAGES["hearing"] = replace(
    STAGES["speech"],
    steps=2000,
    lr=5e-4,
    warmup_steps=50,
    eval_every=400,
    speech_pool=24_000,
    speech_eval=200,
    speech_varied=True,
    out_of_domain_share=0.12,
    vtlp_share=0.5,
    hard_position_share=0.25,
)


def max_objects_at(config: TrainConfig, step: int) -> int:
    """The curriculum: the most objects a scene may hold at `step`."""
    progress = step / config.steps
    return next(n for until, n in config.curriculum if progress < until or until >= 1.0)


def cosine_to_zero(progress: float) -> float:
    """The cosine schedule's factor: 1 at `progress` 0, 0 from 1 on (0.5 half way)."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_at(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then a cosine from `lr` down to `lr * min_lr_ratio` over the planned steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    planned = config.schedule_steps or config.steps
    progress = (step - config.warmup_steps) / max(1, planned - config.warmup_steps)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine_to_zero(progress))
