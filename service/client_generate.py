"""`mmserve generate PROMPT -o out.png`: text to image on a running server (POST /generate), for a shell.

Writes the PNG to `--output` (with `-n` above 1: `out-0.png`, `out-1.png`, ...) and prints where, the seed
(the same command with `--seed` makes the same image) and the server's timings; `--json` prints the
server's answer without the image bytes, with the files written. Exit codes as every client command's
(`service.client_cli`).
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import httpx

from service.client_cli import EXIT_USAGE, ClientError, post


def add_generate_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: Any) -> None:
    generate = commands.add_parser("generate", parents=[common], help="make images from a text on a running server")
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument("-o", "--output", type=Path, default=Path("image.png"), help="the PNG (default image.png)")
    generate.add_argument("-n", type=int, default=1, help="images to make (1-4; seeds seed, seed + 1, ...)")
    generate.add_argument("--seed", type=int, default=None, help="reproduces an image (default: random)")
    generate.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    generate.add_argument("--guidance-scale", type=float, default=None)
    generate.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's)")
    generate.set_defaults(run=run_generate)


def run_generate(client: httpx.Client, args: argparse.Namespace) -> None:
    asked = {"prompt": args.prompt, "n": args.n, "seed": args.seed, "steps": args.steps}
    asked |= {"guidance_scale": args.guidance_scale, "size": args.size}
    if not args.output.parent.is_dir():
        raise ClientError(f"cannot write {args.output}: no folder {args.output.parent}", EXIT_USAGE)
    answer = post(client, "/generate", json={k: v for k, v in asked.items() if v is not None})
    paths = output_paths(args.output, len(answer["images"]))
    lines = []
    for path, image in zip(paths, answer["images"], strict=True):
        try:
            path.write_bytes(base64.b64decode(image["png"]))
        except OSError as e:
            raise ClientError(f"cannot write {path}: {e.strerror}", EXIT_USAGE) from e
        lines.append(f"{path}: {answer['size']}, seed {image['seed']}, {answer['steps']} steps")
    lines.append(f"{answer['model']} in {answer['timings']['total_ms'] / 1000:.2f} s")
    if args.json:
        for image, path in zip(answer["images"], paths, strict=True):
            image.pop("png")
            image["file"] = str(path)
        print(json.dumps(answer))
    else:
        print("\n".join(lines))


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix or '.png'}") for i in range(count)]
