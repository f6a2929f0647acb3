"""`mmserve generate PROMPT -o out.png` against a real server on a tiny random generator."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_e2e_cli_and_logs import mmserve
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str], tiny_generator_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess({**base_settings, "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir)}) as server:
        yield server


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_generate_writes_the_png_the_api_makes(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    done = mmserve("generate", "a large red circle", "-o", str(out), "--seed", "7", "--steps", "4", "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{out}: 32x32, seed 7, 4 steps"
    answer = httpx.post(
        f"{server.url}/generate", json={"prompt": "a large red circle", "seed": 7, "steps": 4}, timeout=60
    ).json()
    assert np.array_equal(pixels(out.read_bytes()), pixels(base64.b64decode(answer["images"][0]["png"])))


def test_several_images_and_json(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "many.png"
    args = ("-o", str(out), "-n", "2", "--steps", "2", "--json", "--url", server.url)
    done = mmserve("generate", "a blue square", *args)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    files = [tmp_path / "many-0.png", tmp_path / "many-1.png"]
    assert [image["file"] for image in answer["images"]] == [str(f) for f in files]
    assert answer["seeds"][1] == answer["seeds"][0] + 1 and "png" not in answer["images"][0]
    assert all(pixels(f.read_bytes()).shape == (32, 32, 3) for f in files)


def test_refusals_give_the_servers_message(server: ServerProcess, tmp_path: Path) -> None:
    done = mmserve("generate", "a red circle", "-o", str(tmp_path / "x.png"), "--size", "64x64", "--url", server.url)
    assert done.returncode == 1 and "400 Bad Request" in done.stderr and "32x32" in done.stderr
    done = mmserve("generate", "a red circle", "-n", "9", "-o", str(tmp_path / "x.png"), "--url", server.url)
    assert done.returncode == 1 and "422" in done.stderr and "n: " in done.stderr
    done = mmserve("generate", "a red circle", "-o", str(tmp_path / "nowhere" / "x.png"), "--url", server.url)
    assert done.returncode == 2 and "cannot write" in done.stderr
