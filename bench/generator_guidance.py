"""The generator's guidance scale and step count, chosen on held-out captions the evaluation does not use.

    python -m bench.generator_guidance [--folder model/weights/generator] [--captions 200]
        [--guidance 3 4 5 6] [--steps 20]

Each setting: one image per caption of held-out scenes 500 onwards (`mmserve evaluate --generate` uses the
first 500), seed = its index, read back by the built-in captioner (`model.generator_eval.round_trip`).
Prints one row per setting (exact match, one object, colour, shape, size, count, R@1), and with `--confusions`
which colours, shapes and sizes the captioner read instead of the prompt's, counted over the objects of
captions read back with the right number of objects (so that a missing object does not shift the rest).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from model import load_model
from model.api import MultimodalModel
from model.evaluate import parse_caption
from model.generator_eval import ROUND_TRIP_CAPTIONS, read_back, round_trip
from model.scenes import HELD_OUT_SEED_START, Scene, make_scene
from model.text_to_image import GENERATOR_DIR, TextToImage

COLUMNS = (
    "round_trip_exact_match",
    "round_trip_exact_match_1_object",
    "object_colour",
    "object_shape",
    "object_size",
    "object_count",
    "recall@1_text_to_image",
)


def confusions(
    generator: TextToImage, captioner: MultimodalModel, scenes: list[Scene], steps: int, guidance: float
) -> None:
    """Print the attribute swaps among objects of captions read back with the right object count."""
    _, read = read_back(generator, captioner, [s.caption for s in scenes], steps, guidance)
    swaps: Counter[tuple[str, str, str]] = Counter()
    objects = matched = borrowed = colour_errors = 0
    for scene, caption in zip(scenes, read, strict=True):
        guess = parse_caption(caption)
        if len(guess) != len(scene.objects):
            continue
        matched += 1
        for truth, got in zip(scene.objects, guess, strict=True):
            objects += 1
            got = (*got, "", "", "")[:3]
            for kind, want, have in zip(
                ("size", "colour", "shape"), (truth.size, truth.colour, truth.shape), got, strict=True
            ):
                if want != have:
                    swaps[(kind, want, have)] += 1
            if truth.colour != got[1]:
                colour_errors += 1
                borrowed += got[1] in {o.colour for o in scene.objects if o is not truth}
    print(f"{matched} of {len(scenes)} captions read with the right count; {objects} objects; swaps (prompt → read):")
    print(f"  colour errors: {colour_errors}, of which {borrowed} took another object's colour of the same prompt")
    for (kind, want, have), n in swaps.most_common(20):
        print(f"  {kind}: {want} → {have}: {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--folder", type=Path, default=GENERATOR_DIR)
    parser.add_argument("--captions", type=int, default=200)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 4.0, 5.0, 6.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[20])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--confusions", action="store_true", help="also the swaps at the first setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = TextToImage.from_pretrained(args.folder)
    captioner = load_model("builtin", "cpu")
    start = HELD_OUT_SEED_START + ROUND_TRIP_CAPTIONS
    scenes = [make_scene(start + i) for i in range(args.captions)]
    if args.confusions:
        confusions(generator, captioner, scenes, args.steps[0], args.guidance[0])
    print(f"{args.folder}: {args.captions} held-out captions (scenes {start}...)")
    print("| steps | guidance | exact | one object | colour | shape | size | count | R@1 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for steps in args.steps:
        for guidance in args.guidance:
            metrics = round_trip(generator, captioner, scenes, steps, guidance)
            cells = " | ".join(f"{metrics.get(k, float('nan')):.3f}" for k in COLUMNS)
            print(f"| {steps} | {guidance:g} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
