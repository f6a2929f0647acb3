"""The text-to-image generator judged by our own captioner: draw held-out captions, read them back.

Held-out captions are those of the scenes from `HELD_OUT_SEED_START` on (training never draws them). Each
caption gets one image (seed: its index in the list, default steps and guidance), and the built-in
multimodal model (which reads rendered scenes at 1.000 exact match) captions it. Reported: whole-caption
round-trip exact match (overall and by object count), per-object colour, shape and size accuracy and
object count (as `model.evaluate` scores captions), left-to-right order (among images whose objects were
all read right as a set, the share read in the right order too; two objects or more), and text→image
recall@1 among 100 with the captioner's image and text embeddings.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from model.evaluate import attribute_accuracy, parse_caption, recall_at_1
from model.scenes import HELD_OUT_SEED_START, MAX_OBJECTS, Scene, make_scene

if TYPE_CHECKING:
    from PIL import Image

    from model.api import MultimodalModel
    from model.text_to_image import TextToImage

ROUND_TRIP_CAPTIONS = 500  # what `mmserve evaluate --generate` and the model card use
EVALUATION_FILE = "evaluation.json"  # the last evaluation's numbers, in the generator's folder
CARD_BEGIN, CARD_END = "<!-- generator:begin -->", "<!-- generator:end -->"


def held_out_scenes(n: int) -> list[Scene]:
    return [make_scene(HELD_OUT_SEED_START + i) for i in range(n)]


def read_back(
    generator: TextToImage,
    captioner: MultimodalModel,
    prompts: list[str],
    steps: int | None = None,
    guidance_scale: float | None = None,
    chunk: int = 50,
) -> tuple[list[Image.Image], list[str]]:
    """One image per prompt (seed = its index), `chunk` at a time, and the captioner's caption of each."""
    images: list[Image.Image] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        images += generator.generate(part, list(range(start, start + len(part))), steps, guidance_scale)
    return images, captioner.caption(images, max_new_tokens=40)


def round_trip(
    generator: TextToImage,
    captioner: MultimodalModel,
    scenes: list[Scene],
    steps: int | None = None,
    guidance_scale: float | None = None,
    chunk: int = 50,
) -> dict[str, float]:
    """The round-trip metrics of `generator` on the captions of `scenes` (one image each, seed = index)."""
    prompts = [s.caption for s in scenes]
    images, read = read_back(generator, captioner, prompts, steps, guidance_scale, chunk)
    hits = [r == p for r, p in zip(read, prompts, strict=True)]
    metrics = {"round_trip_exact_match": sum(hits) / len(hits)}
    for count in range(1, MAX_OBJECTS + 1):
        mine = [h for h, s in zip(hits, scenes, strict=True) if len(s.objects) == count]
        if mine:
            metrics[f"round_trip_exact_match_{count}_object{'s' if count > 1 else ''}"] = sum(mine) / len(mine)
    metrics |= {k.replace("attr_", "object_"): v for k, v in attribute_accuracy(scenes, read).items()}
    in_order = []
    for scene, caption in zip(scenes, read, strict=True):
        truth = [(o.size, o.colour, o.shape) for o in scene.objects]
        guess = parse_caption(caption)
        if len(truth) > 1 and Counter(truth) == Counter(guess):
            in_order.append(guess == truth)
    metrics["left_to_right_order"] = sum(in_order) / max(1, len(in_order))
    if len(prompts) >= 100:
        with torch.inference_mode():
            image_emb = torch.cat([captioner.embed_image(images[s : s + chunk]) for s in range(0, len(images), chunk)])
            text_emb = captioner.embed_text(prompts)
        metrics["recall@1_text_to_image"] = recall_at_1(image_emb, text_emb, prompts)[0]
    return metrics


def seconds_per_image(generator: TextToImage, repeats: int = 3) -> float:
    """The median wall time of one image alone (one client, default settings)."""
    times = []
    for seed in range(repeats):
        began = time.perf_counter()
        generator.generate(["a large red circle"], [seed])
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def evaluate_generator(
    generator: TextToImage, captioner: MultimodalModel, n: int = ROUND_TRIP_CAPTIONS
) -> dict[str, float]:
    """The round trip on `n` held-out captions, and the time of one image alone."""
    metrics = round_trip(generator, captioner, held_out_scenes(n))
    metrics["seconds_per_image_one_client"] = seconds_per_image(generator)
    return metrics


def card_section(folder: Path) -> str:
    """The model card's generator numbers: the last `mmserve evaluate --generate` and the training curve."""
    from model.text_to_image import GeneratorIndex

    results = folder / EVALUATION_FILE
    if not results.exists():
        return "_Not evaluated yet: run `mmserve evaluate --generate`._"
    saved = json.loads(results.read_text())
    index = GeneratorIndex.read(folder)
    training = index.training
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in saved["metrics"].items())
    curve = training.get("curve", [])
    curve_rows = "\n".join(
        f"| {c['step']:,} | {c['minutes']:.1f} | {c['round_trip_exact_match']:.3f} | "
        f"{c.get('round_trip_exact_match_1_object', 0.0):.3f} | {c['object_colour']:.3f} | "
        f"{c['object_shape']:.3f} | {c['object_size']:.3f} | {c['object_count']:.3f} | "
        f"{c.get('recall@1_text_to_image', float('nan')):.3f} |"
        for c in curve
    )
    return (
        f"`mmserve evaluate --generate` on {saved['captions']} held-out captions, one image each (seed = the "
        f"caption's index), {index.default_steps} steps, guidance scale {index.default_guidance_scale:g}, "
        f"read back by the built-in captioner:\n\n| metric | value |\n| --- | --- |\n{rows}\n\n"
        f"Training: {training.get('steps_done', 0):,} steps of {training.get('batch_size', 0)} scenes in "
        f"{training.get('minutes', 0):.1f} minutes of training ({training.get('threads', '?')} thread(s)). "
        f"The learning curve (round trip on the first {training.get('eval_captions', 0)} of those captions, "
        "at the checks during the run):\n\n"
        "| step | training minutes | exact match | one object | colour | shape | size | count | R@1 t→i |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"{curve_rows}"
    )


def write_card_section(folder: Path, card: Path) -> None:
    """Replace the generator's part of an existing model card (between its markers) with `card_section`."""
    text = card.read_text()
    begin, end = text.find(CARD_BEGIN), text.find(CARD_END)
    if begin < 0 or end < 0:
        raise ValueError(f"{card} has no generator markers ({CARD_BEGIN} ... {CARD_END})")
    card.write_text(text[: begin + len(CARD_BEGIN)] + "\n" + card_section(folder) + "\n" + text[end:])


def main(model: MultimodalModel, folder: Path, n: int, card: Path | None) -> dict[str, float]:
    """`mmserve evaluate --generate`: evaluate the generator in `folder`, save the numbers beside it, and
    write them into the model card (unless `card` is None)."""
    from model.text_to_image import TextToImage

    generator = TextToImage.from_pretrained(folder)
    metrics = evaluate_generator(generator, model, n)
    saved = {"captions": n, "metrics": {k: round(v, 4) for k, v in metrics.items()}}
    (folder / EVALUATION_FILE).write_text(json.dumps(saved, indent=2) + "\n")
    if card is not None:
        write_card_section(folder, card)
    return metrics
