"""Train the built-in model from scratch on synthetic scenes: `python -m model.train` / `mmserve train`.

The command plans the shipped recipe's stages (or one of them, with `--stage`, its settings open to the
command line) and runs them in order, each from the previous stage's weights.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from model.checkpoint import WEIGHTS_DIR
from model.config import PRESETS
from model.scenes import QUESTION_FAMILIES
from model.train.loop import train
from model.train.recipe import STAGES, TrainConfig

logger = logging.getLogger("model.train")


def _families(text: str) -> tuple[str, ...]:
    """`position,colour` → ("position", "colour"), for `--scratchpad`."""
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
    "speech_pool",
    "audio_batch_size",
    "decoder_lr_ratio",
    "speech_eval",
    "hard_position_share",
)


def _is_generate(argv: list[str] | None) -> bool:
    """Whether the command asks for `--stage generate` (the generator, trained apart from the recipe)."""
    args = sys.argv[1:] if argv is None else argv
    return "--stage=generate" in args or any(a == "--stage" and b == "generate" for a, b in itertools.pairwise(args))


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
    parser = argparse.ArgumentParser(prog="mmserve train", description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--stage",
        choices=[*STAGES, "generate"],
        default=None,
        help="run this stage alone (default: every stage, in order); 'generate' trains the text-to-image "
        "generator instead (its own flags: --stage generate --help)",
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
    one.add_argument("--speech-pool", type=int, default=None, help="the speech stage: utterances to synthesise")
    one.add_argument("--audio-batch-size", type=int, default=None, help="the speech stage: utterances a step")
    one.add_argument(
        "--decoder-lr-ratio", type=float, default=None, help="the speech stage: the decoder's rate over --lr"
    )
    one.add_argument("--speech-eval", type=int, default=None, help="the speech stage: sentences per quick check")
    one.add_argument(
        "--hard-position-share",
        type=float,
        default=None,
        help="share of scenes whose first question names an object in three words (position)",
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
    if _is_generate(argv):  # the text-to-image generator: its own stage, flags and loop
        from model.train.generator import main as train_generator

        train_generator(argv)
        return
    plan = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if plan.threads:
        torch.set_num_threads(plan.threads)
    started = time.time()
    for stage in plan.stages:
        logger.info("stage %s: %d steps, writing %s", stage.name, stage.config.steps, stage.out)
        train(stage.config, stage.out, stage.run_dir, plan.resume, init=stage.init)
    logger.info("finished in %.1f minutes; the model is in %s", (time.time() - started) / 60, plan.stages[-1].out)
