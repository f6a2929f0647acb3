"""Training the built-in model from scratch on synthetic scenes: `mmserve train` (`python -m model.train`).

Every step draws a fresh batch of scenes (seeds below the held-out range), and trains three things at
once on the same image encoding:
- captioning: the decoder reads `[BOS]` and writes the canonical caption;
- VQA: the decoder reads `[BOS] question [SEP]` and writes the one-word answer (loss on what it writes
  only); for the families in `scratchpad`, the answer comes after a scratchpad and a second `[SEP]`
  (a position answer after the two objects' columns and their relation, a colour answer after the
  object's column, an existence answer after the matching object's column or "zero");
- locked-text contrastive tuning: the image projection is pulled towards the frozen MiniLM embedding of
  the scene's caption (symmetric InfoNCE with soft labels, since two scenes can share a caption).

The shipped model comes from a recipe of five stages, which `mmserve train` runs one after the other:
- `base`: everything from scratch, every question family equally often, one-word answers; a curriculum
  raises the number of objects per scene over the first third of the stage;
- `position`: from the base weights, full scenes, position questions four times as often and written
  with the scratchpad, at half the learning rate;
- `colour`: colour questions four times as often (position twice), both with the scratchpad, so that
  "what colour is the square?" reuses the look-up of an object's column that position questions taught;
- `speech`: a new audio tower, and the decoder learns to write what it hears (espeak-ng's voices, from a
  pool synthesised once: `speech`, `speech_loop`), the image tasks replayed beside it;
- `hearing`: more voices, speeds and listening conditions (`model/speech_conditions.py`), SpecAugment
  (`spec_augment`), and audio that is not a scene sentence transcribed as nothing (`out_of_domain`).

Each stage checkpoints its state atomically every few hundred steps under `--run-dir/<stage>/` and
`--resume` continues from it (a finished stage is not trained again); each stage's weights go to
`--run-dir/<stage>/weights` and the next stage starts from them; the last stage writes the finished model
to `--out`, as a shipping checkpoint (safetensors + config + tokenizer). `--stage` runs one stage alone,
with its settings open to the command line.

The package, one concept a file: `recipe` (a stage's settings, its schedules, the shipped stages), `data`
(batches of scenes as token rows), `objective` (the losses), `loop` (one stage's training, state and
export), `cli` (the command) and `vocabulary` (building a new tokenizer from the scene grammar).
"""

from model.train.cli import Plan, Stage, main, parse_args
from model.train.data import Batch, Batches
from model.train.loop import train
from model.train.objective import losses
from model.train.recipe import STAGES, TrainConfig, lr_at, max_objects_at

__all__ = [
    "STAGES",
    "Batch",
    "Batches",
    "Plan",
    "Stage",
    "TrainConfig",
    "losses",
    "lr_at",
    "main",
    "max_objects_at",
    "parse_args",
    "train",
]
