"""The benchmark's requests and their expected answers, computed with the model in-process.

Each request is a prepared HTTP body; its expected answer is what the model gives for that input alone
(greedy captions with the request's own `max_new_tokens`; the first components of the text embedding),
so a server that answers fast but wrongly is caught. Transcriptions (when the model hears and espeak-ng is
installed) are scene sentences spoken by espeak-ng, each expected to read as the model transcribes it. The
set is written as a Lua table that `verify.lua` (run inside wrk) rotates over, and as JSON that the
in-process limit (`bench/limit.py`) reads.
"""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

    from model import MultimodalModel

Kind = Literal["embed", "caption", "transcribe"]
ENDPOINT_KIND: dict[str, Kind] = {"/embed": "embed", "/caption": "caption", "/transcribe": "transcribe"}

EMBED_COMPONENTS = 8  # how many leading components of each embedding are checked
MIN_NEW_TOKENS, MAX_NEW_TOKENS = 4, 64  # /caption's max_new_tokens, spread evenly over the requests
_PROSE = (
    "a red circle on the left of a blue square the large green triangle stands above two small yellow "
    "diamonds while an orange shape waits near the purple corner of every picture we draw today"
)


@dataclass(frozen=True)
class Request:
    kind: Kind
    path: str
    body: str  # the JSON body, exactly as sent
    expect: list[float] | str  # the leading embedding components, or the caption
    dim: int = 0  # the embedding's length (0 for a caption)
    image_png_b64: str = ""  # the caption's image again, for the in-process limit
    max_new_tokens: int = 0


def embed_texts(count: int = 64, seed: int = 11, words: tuple[int, int] = (3, 48)) -> list[str]:
    """Deterministic texts of mixed lengths (`words`: the fewest and most words, 3 to 48 unless told)."""
    rng, vocabulary = random.Random(seed), _PROSE.split()
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(*words))) for _ in range(count)]


def token_limits(count: int) -> list[int]:
    """`count` values of max_new_tokens spread evenly over [4, 64], interleaved so neighbours differ."""
    spread = [MIN_NEW_TOKENS + (MAX_NEW_TOKENS - MIN_NEW_TOKENS) * i // max(1, count - 1) for i in range(count)]
    return spread[0::2] + spread[1::2]


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def build(
    model: MultimodalModel, embed_count: int = 64, caption_count: int = 32, words: tuple[int, int] = (3, 48)
) -> dict[Kind, list[Request]]:
    """Requests for each endpoint with the answers `model` gives for each input alone."""
    from model.scenes import HELD_OUT_SEED_START, make_scene, render

    embeds = []
    for text in embed_texts(embed_count, words=words):
        vector = model.embed_text([text])[0]
        embeds.append(
            Request(
                "embed",
                "/embed",
                json.dumps({"input": text}),
                [round(float(v), 6) for v in vector[:EMBED_COMPONENTS]],
                dim=int(vector.shape[0]),
            )
        )
    captions = []
    for i, limit in enumerate(token_limits(caption_count)):
        image = render(make_scene(HELD_OUT_SEED_START + 500 + i))
        encoded = _png_b64(image)
        caption = model.caption([image], [limit])[0]
        body = json.dumps({"image": encoded, "max_new_tokens": limit})
        captions.append(Request("caption", "/caption", body, caption, image_png_b64=encoded, max_new_tokens=limit))
    requests: dict[Kind, list[Request]] = {"embed": embeds, "caption": captions}
    if "transcribe" in model.tasks and shutil.which("espeak-ng"):
        requests["transcribe"] = transcriptions(model)
    return requests


def spoken_sentences(count: int) -> list[str]:
    """Scene captions (held-out scenes), to be spoken."""
    from model.scenes import HELD_OUT_SEED_START, make_scene

    return [make_scene(HELD_OUT_SEED_START + 700 + i).caption for i in range(count)]


def espeak_wav(text: str, speed: int = 160) -> bytes:
    """`text` spoken by espeak-ng (its default English voice), as a WAV file's bytes."""
    command = ["espeak-ng", "-v", "en", "-s", str(speed), "--stdout", text]
    return subprocess.run(command, capture_output=True, check=True, timeout=60).stdout


def transcriptions(model: MultimodalModel, count: int = 16) -> list[Request]:
    """/transcribe requests (JSON, a base64 WAV by espeak-ng of a scene sentence, speeds varied) and the
    transcript the model gives for each, decoded as the service decodes it."""
    from service.audio import decode_audio
    from service.settings import Settings

    assert model.audio is not None
    requests = []
    for i, sentence in enumerate(spoken_sentences(count)):
        wav = espeak_wav(sentence, speed=140 + 10 * (i % 4))
        samples = decode_audio(wav, model.audio, Settings().max_audio_seconds).samples
        text = model.transcribe([samples])[0]
        body = json.dumps({"audio": base64.b64encode(wav).decode()})
        requests.append(Request("transcribe", "/transcribe", body, text))
    return requests


def save(requests: dict[Kind, list[Request]], path: Path) -> None:
    path.write_text(json.dumps({kind: [asdict(r) for r in items] for kind, items in requests.items()}))


def load(path: Path) -> dict[Kind, list[Request]]:
    raw = json.loads(path.read_text())
    return {kind: [Request(**r) for r in items] for kind, items in raw.items()}


def _lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return f'"{escaped}"'


def lua_table(requests: list[Request], tolerance: float) -> str:
    """A Lua chunk returning the requests: the head up to the X-Request-ID value, the body, the answer."""
    lines = [f"return {{ tolerance = {tolerance!r}, items = {{"]
    for r in requests:
        head = (
            f"POST {r.path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(r.body.encode())}\r\nX-Request-ID: "
        )
        if isinstance(r.expect, str):
            expect = _lua_string(r.expect)
        else:
            expect = "{" + ", ".join(repr(v) for v in r.expect) + "}"
        lines.append(
            f"  {{ kind = {_lua_string(r.kind)}, head = {_lua_string(head)}, body = {_lua_string(r.body)}, "
            f"expect = {expect}, dim = {r.dim} }},"
        )
    lines.append("} }")
    return "\n".join(lines) + "\n"


def write_lua(requests: list[Request], path: Path, tolerance: float = 1e-3) -> Path:
    path.write_text(lua_table(requests, tolerance))
    return path
