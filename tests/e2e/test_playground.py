"""The playground page in a real browser: Debian's chromium, headless, driven by Playwright, against a real
server on the built-in model (so captions and answers are meaningful) with API keys on.

`MMSERVE_PLAYGROUND_SCREENSHOT=docs/playground.png python -m pytest tests/e2e/test_playground.py` also
writes the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model.scenes import make_scene, render
from tests.support.browser import browser_page, needs_chromium, sync_api
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow]

KEY = "sk-playground-test-0123"
SCENE = make_scene(10_000_003)  # the README's scene: a large orange circle and a small yellow square


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    settings = {"MMSERVE_MODEL": "builtin", "MMSERVE_DEVICE": "cpu", "MMSERVE_TORCH_THREADS": "1",
                "MMSERVE_API_KEYS": KEY}  # fmt: skip
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture
def page(server: ServerProcess) -> Iterator[sync_api.Page]:
    with browser_page(1180, 900) as page:
        yield page


def test_the_page_and_its_files_need_no_key(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/playground.js" in page.text and "http" not in page.text.split("<body>")[0]  # nothing remote
    script = httpx.get(f"{server.url}/static/playground.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for escape in ("/static/%2e%2e/v1/models", "/static/%2e%2e/auth.py"):  # no way out of the files' folder
        assert httpx.get(f"{server.url}{escape}").status_code == 404
    assert httpx.post(f"{server.url}/caption").status_code == 401  # the API still needs it


@needs_chromium
def test_caption_answer_and_similarity_in_a_real_browser(
    server: ServerProcess, page: sync_api.Page, tmp_path: Path
) -> None:
    image = tmp_path / "scene.png"
    render(SCENE).save(image)
    page.goto(f"{server.url}/")
    sync_api.expect(page.locator("#status")).to_contain_text("mmserve-builtin")

    page.set_input_files("#file", str(image))  # no key yet: the server's refusal is shown
    sync_api.expect(page.locator("#error")).to_contain_text("401: missing API key")

    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.set_input_files("#file", str(image))
    caption = page.locator("#caption[data-state=done]")
    sync_api.expect(caption).to_have_text(SCENE.caption)
    sync_api.expect(page.locator("#caption-timings")).to_contain_text("batch size 1")

    page.fill("#question", "what colour is the circle?")
    page.click("#vqa-form button")
    sync_api.expect(page.locator("#answer")).to_have_text("orange")

    page.click("#embed-form button")  # the default texts: the scene's caption, then "three blue triangles"
    to_image = page.locator("#similarity td[data-image]")
    sync_api.expect(to_image).to_have_count(2)
    matching, other = (float(text) for text in to_image.all_inner_texts())
    assert matching > other, (matching, other)

    routes = page.locator("#log tbody tr td:first-child").all_inner_texts()
    assert routes[:3] == ["/embed (image)", "/embed (texts)", "/vqa"] and "/caption (stream)" in routes
    assert page.locator("#error").is_hidden() or page.locator("#error").inner_text() == ""
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    if target := os.environ.get("MMSERVE_PLAYGROUND_SCREENSHOT"):
        shutil.copy(tmp_path / "playground.png", target)
