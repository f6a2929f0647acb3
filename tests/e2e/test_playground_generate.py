"""The playground's text-to-image panel in a real browser (Debian's chromium via Playwright), against a real
server on a tiny random generator: progress and previews while it denoises, then the image, which is the
one the API makes for the same request.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.browser import browser_page, needs_chromium, sync_api
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str], tiny_generator_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess({**base_settings, "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir)}) as server:
        yield server


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@needs_chromium
def test_the_panel_shows_progress_previews_and_the_image(server: ServerProcess) -> None:
    with browser_page(1180, 900) as page:
        page.goto(f"{server.url}/")
        page.fill("#prompt", "a small blue square")
        page.fill("#seed", "11")
        page.fill("#steps", "6")
        page.click("#generate-form button")
        image = page.locator("#generated[data-state=done]")
        sync_api.expect(image).to_be_visible()
        sync_api.expect(page.locator("#generate-status")).to_have_text("done: 6 steps, seed 11, 32x32")
        assert page.locator("#generated").get_attribute("data-previews") == "2"  # steps 2 and 4 (step 6 is the image)
        source = image.get_attribute("src") or ""
        assert page.locator("#generate-progress").evaluate("p => [p.value, p.max]") == [6, 6]
        routes = page.locator("#log tbody tr td:first-child").all_inner_texts()
        assert routes == ["/generate (stream)"]
        assert page.locator("#error").is_hidden()
    body = {"prompt": "a small blue square", "seed": 11, "steps": 6}
    same = httpx.post(f"{server.url}/generate", json=body, headers={"Accept": "image/png"}, timeout=60)
    assert np.array_equal(pixels(base64.b64decode(source.split(",", 1)[1])), pixels(same.content))
