"""A caption stream's largest gap between two tokens, alone and while clients transcribe (issue 20).

    python -m bench.stream_gaps --source /work/main --source . --clients 8 --seconds 30

For each source tree (a checkout of mmserve, whose code the server runs: it is the server's working
directory and `PYTHONPATH`), a server with the built-in model is started on the CPU, then:
1. alone: caption streams (`/caption`, JSON, `stream: true`, a rendered scene) one after another for
   `--seconds`, the arrival of each `token` event timed;
2. under transcription: wrk (`bench/transcribe.lua`) keeps `--clients` connections POSTing a spoken scene
   sentence (espeak-ng, a base64 WAV) to `/transcribe` (closed loop), and the same streams run meanwhile.
Printed per phase: the largest gap between two token events over every stream, the median of each
stream's largest gap, the 99th percentile of all gaps, and what wrk got (transcriptions/s, non-2xx).
The sources run one after another in the order given; give them in both orders to see the machine's drift.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.servers import Server, ServerSpec
from bench.workload import _png_b64, espeak_wav, spoken_sentences

SCRIPT = Path(__file__).resolve().parent / "transcribe.lua"


@dataclass(frozen=True)
class Gaps:
    """Token gaps (ms) of the caption streams of one phase."""

    largest_per_stream: list[float]
    all_gaps: list[float]

    def line(self) -> str:
        gaps, nan = sorted(self.all_gaps), float("nan")
        p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else nan
        return (
            f"{len(self.largest_per_stream)} streams, {len(gaps)} gaps: largest {max(gaps, default=nan):.1f} ms, "
            f"median of each stream's largest {statistics.median(self.largest_per_stream or [nan]):.1f} ms, "
            f"p99 {p99:.1f} ms"
        )


def stream_gaps(url: str, body: str, seconds: float) -> Gaps:
    """Caption streams one after another for `seconds`; each one's gaps between token events."""
    largest, gaps = [], []
    end = time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < end:
            arrivals = []
            with client.stream(
                "POST", f"{url}/caption", content=body, headers={"content-type": "application/json"}
            ) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line == "event: token":
                        arrivals.append(time.perf_counter())
            stream = [1000 * (b - a) for a, b in itertools.pairwise(arrivals)]
            if stream:
                largest.append(max(stream))
                gaps += stream
    return Gaps(largest, gaps)


def measure(source: Path, caption_body: str, audio_body: Path, clients: int, seconds: float, threads: int) -> None:
    env = {"PYTHONPATH": str(source), "MMSERVE_TORCH_THREADS": str(threads)}
    command = (sys.executable, "-m", "service", "serve")
    spec = ServerSpec(f"mmserve-{source.name}", str(source), command, env, cwd=source)
    with Server(spec, "cpu") as server:
        stream_gaps(server.url, caption_body, 2)  # warm-up
        alone = stream_gaps(server.url, caption_body, seconds)
        load = ["wrk", "-t2", f"-c{clients}", f"-d{int(seconds) + 4}s", "--timeout", "30s", "-s", str(SCRIPT)]
        wrk = subprocess.Popen(
            [*load, f"{server.url}/transcribe"],
            env={**os.environ, "BENCH_BODY": str(audio_body)},
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # the transcriptions are running
        loaded = stream_gaps(server.url, caption_body, seconds)
        out, _ = wrk.communicate(timeout=seconds + 60)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    print(f"{source}:")
    print(f"  alone:                    {alone.line()}")
    print(f"  {clients} clients transcribing: {loaded.line()}")
    print(f"  transcriptions: {rate.group(1) if rate else '?'}/s, non-2xx {non2xx.group(1) if non2xx else 0}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, action="append", required=True, help="a checkout to serve (repeatable)")
    parser.add_argument("--clients", type=int, default=8, help="wrk's connections transcribing")
    parser.add_argument("--seconds", type=float, default=30, help="each phase's length")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    from model.scenes import HELD_OUT_SEED_START, make_scene, render

    image = render(make_scene(HELD_OUT_SEED_START + 500))
    caption_body = json.dumps({"image": _png_b64(image), "max_new_tokens": args.max_new_tokens, "stream": True})
    wav = espeak_wav(spoken_sentences(1)[0])
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as audio_body:
        audio_body.write(json.dumps({"audio": base64.b64encode(wav).decode()}).encode())
    for source in args.source:
        measure(source.resolve(), caption_body, Path(audio_body.name), args.clients, args.seconds, args.torch_threads)
    Path(audio_body.name).unlink()


if __name__ == "__main__":
    main()
