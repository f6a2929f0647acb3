"""Memory under large photos: 64 concurrent 40-megapixel uploads, and the server's peak resident memory.

Starts `python -m service serve` from a checkout (`--code`, default this one; pass an older export to
measure "before"), waits for it, sends one small caption to settle, notes its resident memory (VmRSS),
then posts `--concurrency` 40 MP images at once (multipart, `/caption`, 4 tokens) and reads the kernel's
peak resident memory (VmHWM) at the end: the growth is what the burst cost. Formats: a JPEG (q90) and a
fast-compressed PNG of one synthetic photo (gradients and shapes). Models: the built-in one (the shipped
checkpoint) and a tiny random BLIP (tests/support/hf_checkpoints.py). Prints one JSON line per run.

    python bench/image_memory.py                         # this checkout: builtin and BLIP, JPEG and PNG
    python bench/image_memory.py --code /tmp/before      # the same against an older checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from tests.support.hf_checkpoints import build_blip_captioning
from tests.support.photos import PHOTO_SIZE, photo
from tests.support.server import ServerProcess, encode_image, solid_image

MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # the PNG is larger than the default 10 MB


class CheckoutServer(ServerProcess):
    """A `ServerProcess` run from another checkout's code (its own directory first on the path)."""

    def __init__(self, settings: dict[str, str], code: Path) -> None:
        super().__init__({**settings, "PYTHONPATH": str(code)})
        self._code = code

    def start(self) -> CheckoutServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=self._env,
            cwd=self._code,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self


def memory_kib(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in KiB (VmRSS: resident now; VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def burst(url: str, data: bytes, filename: str, concurrency: int) -> list[int]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> int:
            files = {"image": (filename, data)}
            response = await client.post(f"{url}/caption", files=files, data={"max_new_tokens": "4"})
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(concurrency)))


def run(model: str, label: str, image_format: str, data: bytes, code: Path, concurrency: int) -> dict[str, object]:
    settings = {
        "MMSERVE_MODEL": model,
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "MMSERVE_REQUEST_TIMEOUT_S": "600",
    }
    with CheckoutServer(settings, code) as server:
        assert server.process is not None
        small = encode_image(solid_image((200, 40, 40), (64, 48)))
        httpx.post(f"{server.url}/caption", files={"image": ("s.png", small)}, timeout=120).raise_for_status()
        before_kib = memory_kib(server.process.pid, "VmRSS")
        started = time.monotonic()
        statuses = asyncio.run(burst(server.url, data, f"photo.{image_format.lower()}", concurrency))
        elapsed_s = time.monotonic() - started
        peak_kib = memory_kib(server.process.pid, "VmHWM")
    return {
        "code": str(code),
        "model": label,
        "format": image_format,
        "image_mb": round(len(data) / 1e6, 1),
        "concurrency": concurrency,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "rss_before_mb": round(before_kib / 1024),
        "peak_rss_mb": round(peak_kib / 1024),
        "peak_growth_mb": round((peak_kib - before_kib) / 1024),
        "seconds": round(elapsed_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--models", default="builtin,blip")
    parser.add_argument("--formats", default="JPEG,PNG")
    args = parser.parse_args()
    image = photo(PHOTO_SIZE)
    images = {"JPEG": encode_image(image, "JPEG", quality=90), "PNG": encode_image(image, "PNG", compress_level=1)}
    del image
    with tempfile.TemporaryDirectory() as tmp:
        models = {"builtin": "builtin", "blip": str(build_blip_captioning(Path(tmp) / "blip"))}
        for label in args.models.split(","):
            for image_format in args.formats.split(","):
                result = run(models[label], label, image_format, images[image_format], args.code, args.concurrency)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
