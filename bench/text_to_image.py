"""Text to image under load: step-level continuous batching vs whole-request batching vs the generator
in-process, with every image verified against the same request generated alone.

One light asyncio process (httpx) drives two real servers, both started on the same generator folder:
`continuous` (the default scheduler: images join and leave between denoising steps) and `static`
(`MMSERVE_SCHEDULER=static`: each batch of images runs to its longest request's end). Closed loop: `c`
clients take the next request of a fixed list (prompts of the scenes, step counts mixed 8–50, seeds
distinct) until it is empty. The limit is the same list through the generator in-process, with no HTTP and
no threads: one at a time for c=1, and for c>1 a `DenoisingState` of `c` rows refilled as rows finish (what
the server does, without the server). Every PNG served is compared, pixel for pixel, with the image of the
same request generated alone in-process (max difference ≤ 1/255 counts as equal).

Then an embedding's latency (`POST /embed`, one text, one client, one at a time) alone and while 8 clients
generate, on each server. Each cell runs in both orders (continuous first, then static first), so a
machine whose load drifts shows it in the ratios.

    python -m bench.text_to_image --out /tmp/t2i.json                  # the random built-in-shaped UNet
    python -m bench.text_to_image --generator model/weights/generator  # a real folder
    python -m bench.text_to_image --embed-only --out /tmp/t2i-embed.json  # the embedding cells alone
    python -m bench.text_to_image --render /tmp/t2i.json                # the tables again, from a result file
    python -m bench.text_to_image --render /tmp/t2i.json --plot docs/benchmarks-text-to-image.png
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from tests.support.server import ServerProcess

PROMPTS = (
    "a large red circle",
    "a small blue square and a large green triangle",
    "three yellow circles",
    "a large orange circle and a small yellow square",
    "a purple triangle left of a white square",
)
STEP_MIX = (8, 12, 20, 30, 50)
GUIDANCE = 4.0


def builtin_shaped_generator(out_dir: Path, seed: int = 0) -> Path:
    """A random UNet folder of the built-in generator's shape (model/weights/generator, as trained by the
    `generate` stage: 16×16 samples of 64×64 pixels folded 4×4, channels (64, 128, 128), cross-attention at
    the two lower levels on MiniLM's 384-d token states, flow matching); random weights, the same cost."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(
        sample_size=16,
        in_channels=48,
        out_channels=48,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    with torch.no_grad():  # wider than diffusers' zero-initialised output conv: images that depend on the prompt
        for parameter in unet.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.02)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir / "unet")
    scheduler: Any = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.save_pretrained(out_dir / "scheduler")
    index = {
        "_class_name": "MmserveTextToImage",
        "text_encoder": "builtin-minilm",
        "sample_size": 16,
        "pixel_shuffle": 4,
        "output_size": 64,
        "vae": None,
        "default_steps": 20,
        "default_guidance_scale": GUIDANCE,
        "uncond_prompt": "",
        "max_text_tokens": 64,
        "text_attention_mask": True,
        "prediction": "flow",
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir


@dataclass(frozen=True)
class Ask:
    prompt: str
    seed: int
    steps: int

    def body(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "seed": self.seed, "steps": self.steps, "guidance_scale": GUIDANCE}


def workload(count: int, seed: int) -> list[Ask]:
    rng = random.Random(seed)
    return [Ask(rng.choice(PROMPTS), 1000 * seed + i, rng.choice(STEP_MIX)) for i in range(count)]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


@dataclass
class Run:
    mode: str
    clients: int
    images: int
    wall_s: float
    latencies_ms: list[float]
    mismatches: int
    errors: int

    def row(self) -> dict[str, Any]:
        p50 = statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")
        return {
            "mode": self.mode,
            "clients": self.clients,
            "images": self.images,
            "images_per_s": round(self.images / self.wall_s, 3),
            "p50_ms": round(p50, 1),
            "mismatches": self.mismatches,
            "errors": self.errors,
        }


class InProcess:
    """The generator itself: references (each request alone) and the limit."""

    def __init__(self, folder: Path) -> None:
        from model.image_generator import load_image_generator
        from model.text import TextTower

        torch.set_num_threads(1)
        self.generator = load_image_generator(folder, torch.device("cpu"), None, text_tower=TextTower())
        self.alone: dict[Ask, np.ndarray] = {}

    def spec(self, ask: Ask) -> Any:
        return self.generator.image_spec(ask.prompt, ask.seed, ask.steps, GUIDANCE)

    def reference(self, asks: Sequence[Ask]) -> None:
        for ask in asks:
            if ask not in self.alone:
                self.alone[ask] = pixels(self.generator.generate([self.spec(ask)])[0])

    def step_ms(self, rows: int, repeats: int = 5) -> tuple[float, float]:
        """The median ms of a denoising step of one image, and of `rows` images, with `rows` running (50
        steps each, guided): the floor under what a request beside them waits for, and what it waited before."""
        state = self.generator.new_state(rows)
        state.join([self.spec(Ask(PROMPTS[i % len(PROMPTS)], i, 50)) for i in range(rows)])
        one, every = [], []
        for i in range(repeats):
            t = time.perf_counter()
            state.step([i % rows])
            one.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            state.step()
            every.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(one), 1), round(statistics.median(every), 1)

    def limit(self, asks: Sequence[Ask], clients: int) -> Run:
        """The list through the generator with `clients` rows at most, refilled as rows finish."""
        started = time.perf_counter()
        latencies: list[float] = []
        mismatches = 0
        if clients == 1:
            for ask in asks:
                t = time.perf_counter()
                image = self.generator.generate([self.spec(ask)])[0]
                latencies.append((time.perf_counter() - t) * 1000)
                mismatches += int(np.abs(pixels(image) - self.alone[ask]).max() > 1)
        else:
            state = self.generator.new_state(clients)
            waiting, running = list(asks), list[Ask]()
            while waiting or running:
                room = clients - len(running)
                if room and waiting:
                    joining, waiting = waiting[:room], waiting[room:]
                    state.join([self.spec(ask) for ask in joining])
                    running += joining
                updates = state.step()
                keep = []
                for i, update in enumerate(updates):
                    if update.finished:
                        assert update.image is not None
                        mismatches += int(np.abs(pixels(update.image) - self.alone[running[i]]).max() > 1)
                    else:
                        keep.append(i)
                state.filter(keep)
                running = [running[i] for i in keep]
        return Run("in-process", clients, len(asks), time.perf_counter() - started, latencies, mismatches, 0)


async def over_http(url: str, mode: str, asks: Sequence[Ask], clients: int, reference: InProcess) -> Run:
    queue = list(asks)
    latencies: list[float] = []
    counts = {"mismatches": 0, "errors": 0}

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            ask = queue.pop(0)
            t = time.perf_counter()
            response = await http.post("/generate", json=ask.body(), headers={"Accept": "image/png"})
            if response.status_code != 200:
                counts["errors"] += 1
                continue
            latencies.append((time.perf_counter() - t) * 1000)
            served = pixels(Image.open(io.BytesIO(response.content)))
            counts["mismatches"] += int(np.abs(served - reference.alone[ask]).max() > 1)

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    return Run(mode, clients, len(asks), wall, latencies, counts["mismatches"], counts["errors"])


async def embed_latency(url: str, count: int) -> tuple[float, float]:
    """An embedding's p50 and p90 (ms) over `count` one at a time."""
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for i in range(count):
            t = time.perf_counter()
            response = await http.post("/embed", json={"input": [f"a large red circle {i}"]})
            response.raise_for_status()
            latencies.append((time.perf_counter() - t) * 1000)
    deciles = statistics.quantiles(latencies, n=10)
    return round(statistics.median(latencies), 1), round(deciles[-1], 1)


async def embed_under_load(url: str, mode: str, asks: Sequence[Ask], reference: InProcess) -> dict[str, Any]:
    alone = await embed_latency(url, 20)
    load = asyncio.ensure_future(over_http(url, mode, asks, 8, reference))
    await asyncio.sleep(0.5)  # the 8 clients are generating
    under = await embed_latency(url, 20)
    run = await load
    return {
        "mode": mode,
        "embed_p50_p90_alone_ms": alone,
        "embed_p50_p90_under_8_generating_ms": under,
        **run.row(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--generator", type=Path, default=None, help="a generator folder (default: random, the built-in's shape)"
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests in the list per client (c=1: 4)")
    parser.add_argument("--threads", default="1", help="MMSERVE_TORCH_THREADS (and the in-process limit's)")
    parser.add_argument("--no-embed", action="store_true", help="skip the embedding-under-load cells")
    parser.add_argument("--embed-only", action="store_true", help="only the embedding-under-load cells")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a results file, run nothing")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the results as a PNG here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        rendered = json.loads(args.render.read_text())
        print(markdown(rendered))
        if args.plot:
            plot(rendered, args.plot)
        return
    with tempfile.TemporaryDirectory(prefix="mmserve-t2i-bench-") as tmp:
        folder = args.generator or builtin_shaped_generator(Path(tmp) / "generator")
        settings = {
            "MMSERVE_MODEL": "builtin",
            "MMSERVE_GENERATE_MODEL": str(folder),
            "MMSERVE_DEVICE": "cpu",
            "MMSERVE_TORCH_THREADS": args.threads,
            "MMSERVE_REQUEST_TIMEOUT_S": "600",
        }
        reference = InProcess(folder)
        cells = {c: workload(max(4, c * args.requests_per_client), seed=c) for c in args.clients}
        cells = {} if args.embed_only else cells
        embed_asks = workload(16, seed=99) if not args.no_embed else []
        started = time.perf_counter()
        for asks in [*cells.values(), embed_asks]:
            reference.reference(asks)
        print(f"references (each request alone, in-process): {time.perf_counter() - started:.1f} s", flush=True)
        results: dict[str, Any] = {"generator": str(args.generator or "random, built-in shape"), "runs": []}
        with (
            ServerProcess(settings) as continuous,
            ServerProcess({**settings, "MMSERVE_SCHEDULER": "static"}) as static,
        ):
            servers = {"continuous": continuous.url, "static": static.url}
            for order in (("continuous", "static"), ("static", "continuous")):
                for clients, asks in cells.items():
                    for mode in order:
                        run = asyncio.run(over_http(servers[mode], mode, asks, clients, reference))
                        results["runs"].append({"order": order[0] + " first", **run.row()})
                        print(results["runs"][-1], flush=True)
                    limit = reference.limit(asks, clients)
                    results["runs"].append({"order": order[0] + " first", **limit.row()})
                    print(results["runs"][-1], flush=True)
            results["embed"] = []
            if not args.no_embed:
                one, eight = reference.step_ms(8)
                results["step_ms"] = {"one image of 8": one, "8 images": eight}
                print(results["step_ms"], flush=True)
            for order in (("continuous", "static"), ("static", "continuous")) if not args.no_embed else ():
                for mode in order:
                    cell = asyncio.run(embed_under_load(servers[mode], mode, embed_asks, reference))
                    results["embed"].append({"order": order[0] + " first", **cell})
                    print(results["embed"][-1], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    if args.plot:
        plot(results, args.plot)


def plot(results: dict[str, Any], path: Path) -> None:
    """Images/s and p50 against clients, a line per mode and order; and an embedding's p50 alone and under load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, latency, embed) = plt.subplots(1, 3, figsize=(17, 4.8))
    runs = results["runs"]
    for i, order in enumerate(dict.fromkeys(r["order"] for r in runs)):
        for j, mode in enumerate(("continuous", "static", "in-process")):
            points = sorted((r for r in runs if r["order"] == order and r["mode"] == mode), key=lambda r: r["clients"])
            line = "-" if i == 0 else "--"
            style = {"marker": "o", "color": f"C{j}", "linestyle": line, "label": f"{mode} ({order})"}
            rate.plot([r["clients"] for r in points], [r["images_per_s"] for r in points], **style)
            if mode != "in-process":  # the limit's latency is a batch's, not a request's
                latency.plot([r["clients"] for r in points], [r["p50_ms"] for r in points], **style)
    rate.set_title("/generate: images/s (steps mixed 8-50)")
    latency.set_title("/generate: p50 latency (ms)")
    for axis in (rate, latency):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    cells = results.get("embed", [])
    labels = [f"{c['mode']}\n({c['order']})" for c in cells]
    x = np.arange(len(cells))
    embed.bar(x - 0.2, [c["embed_p50_p90_alone_ms"][0] for c in cells], 0.4, label="alone")
    embed.bar(x + 0.2, [c["embed_p50_p90_under_8_generating_ms"][0] for c in cells], 0.4, label="while 8 generate")
    embed.set_xticks(x, labels, fontsize=7)
    embed.set_title("/embed p50 (ms)")
    embed.legend(fontsize=7)
    figure.suptitle(f"text to image on {results.get('generator', '?')}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def markdown(results: dict[str, Any]) -> str:
    """The results as docs/benchmarks.md's tables: each run in its order, and the ratios within each order."""
    lines = [
        "| order | clients | mode | images/s | p50 ms | × whole-request | × in-process | mismatches | errors |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    runs = results["runs"]
    for run in runs:
        same = {r["mode"]: r for r in runs if r["order"] == run["order"] and r["clients"] == run["clients"]}
        static, limit = same["static"]["images_per_s"], same["in-process"]["images_per_s"]
        p50 = "—" if run["p50_ms"] != run["p50_ms"] else f"{run['p50_ms']:.0f}"  # NaN: no per-request latency
        lines.append(
            f"| {run['order']} | {run['clients']} | {run['mode']} | {run['images_per_s']:.2f} | {p50} | "
            f"{run['images_per_s'] / static:.2f} | {run['images_per_s'] / limit:.2f} | {run['mismatches']} | "
            f"{run['errors']} |"
        )
    lines += [
        "",
        "| order | server | /embed p50 alone | p50 while 8 generate | × | p90 alone | p90 while 8 generate | "
        "images/s meanwhile | mismatches | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell in results.get("embed", []):
        (a50, a90), (u50, u90) = cell["embed_p50_p90_alone_ms"], cell["embed_p50_p90_under_8_generating_ms"]
        lines.append(
            f"| {cell['order']} | {cell['mode']} | {a50:.1f} | {u50:.1f} | {u50 / a50:.2f} | {a90:.1f} | {u90:.1f} | "
            f"{cell['images_per_s']:.2f} | {cell['mismatches']} | {cell['errors']} |"
        )
    if "step_ms" in results:
        steps = results["step_ms"]
        lines += [
            "",
            f"A denoising step in-process, 8 images running: {steps['one image of 8']:.0f} ms for one of them, "
            f"{steps['8 images']:.0f} ms for all 8.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
