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
from tests.support.server import ServerProcess, shipped_settings

pytestmark = [pytest.mark.slow]

KEY = "sk-playground-test-0123"
SCENE = make_scene(10_000_003)  # the README's scene: a large orange circle and a small yellow square


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(shipped_settings(MMSERVE_API_KEYS=KEY)) as server:
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


# What a new user hit on the old page, each mended.


def open_with_key(page: sync_api.Page, server: ServerProcess) -> None:
    page.goto(f"{server.url}/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")


@needs_chromium
def test_an_error_goes_with_the_next_success(server: ServerProcess, page: sync_api.Page) -> None:
    page.goto(f"{server.url}/")
    page.click("#embed-form button")  # no key yet
    sync_api.expect(page.locator("#error")).to_contain_text("401: missing API key")
    page.fill("#api-key", KEY)
    page.click("#embed-form button")
    sync_api.expect(page.locator("#similarity td.num")).to_have_count(4)
    sync_api.expect(page.locator("#error")).to_be_hidden()


@needs_chromium
def test_similarity_to_a_new_image_replaces_the_previous_images(
    server: ServerProcess, page: sync_api.Page, tmp_path: Path
) -> None:
    other = make_scene(10_000_011)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    render(SCENE).save(first)
    render(other).save(second)
    texts = ["a large orange circle and a small yellow square", "three blue triangles"]  # the page's defaults
    auth = {"Authorization": f"Bearer {KEY}"}
    vectors = [
        d["embedding"] for d in httpx.post(f"{server.url}/embed", json={"input": texts}, headers=auth).json()["data"]
    ]

    def scores(image: Path) -> list[str]:  # as the page computes and shows them
        embedded = httpx.post(f"{server.url}/embed", files={"image": image.read_bytes()}, headers=auth).json()
        image_vector = embedded["data"][0]["embedding"]
        return [f"{sum(a * b for a, b in zip(v, image_vector, strict=True)):.3f}" for v in vectors]

    open_with_key(page, server)
    page.set_input_files("#file", str(first))
    page.click("#embed-form button")
    to_image = page.locator("#similarity td[data-image]")
    sync_api.expect(to_image).to_have_text(scores(first))
    page.set_input_files("#file", str(second))
    sync_api.expect(page.locator("#caption[data-state=done]")).to_have_text(other.caption)
    sync_api.expect(to_image).to_have_text(scores(second))  # compared again, with the new image


@needs_chromium
def test_a_file_that_is_not_an_image_leaves_the_drop_zone_as_it_was(
    server: ServerProcess, page: sync_api.Page, tmp_path: Path
) -> None:
    notes, image = tmp_path / "notes.txt", tmp_path / "scene.png"
    notes.write_text("not a picture")
    render(SCENE).save(image)
    open_with_key(page, server)
    page.set_input_files("#file", str(notes))
    sync_api.expect(page.locator("#error")).to_contain_text("notes.txt is not an image")
    sync_api.expect(page.locator("#drop-hint")).to_be_visible()  # the old page left the zone blank
    sync_api.expect(page.locator("#drop-hint")).to_contain_text("drop an image here", ignore_case=True)
    page.set_input_files("#file", str(image))
    sync_api.expect(page.locator("#caption[data-state=done]")).to_have_text(SCENE.caption)
    page.set_input_files("#file", str(notes))
    sync_api.expect(page.locator("#error")).to_contain_text("notes.txt is not an image")
    sync_api.expect(page.locator("#preview")).to_be_visible()  # the image before it stays, and so does its caption
    sync_api.expect(page.locator("#caption")).to_have_text(SCENE.caption)


@needs_chromium
def test_an_empty_answer_says_what_to_ask(server: ServerProcess, page: sync_api.Page, tmp_path: Path) -> None:
    image = tmp_path / "scene.png"
    render(SCENE).save(image)
    auth = {"Authorization": f"Bearer {KEY}"}
    known = httpx.post(
        f"{server.url}/vqa",
        files={"image": image.read_bytes()},
        data={"question": "how many shapes are there?"},
        headers=auth,
    )
    assert known.status_code == 200, known.text
    # A reply of the server's, its answer left blank as a model may leave it (Playwright's route cannot forward
    # the page's File body to the server, so the reply is made beforehand).
    page.route("**/vqa", lambda route: route.fulfill(json={**known.json(), "answer": ""}))
    open_with_key(page, server)
    page.set_input_files("#file", str(image))
    page.fill("#question", "where is the square?")
    page.click("#vqa-form button")
    hint = page.locator("#question-hint")
    sync_api.expect(hint).to_be_visible()
    hint.get_by_role("button", name="what colour is the circle?").click()
    assert page.locator("#question").input_value() == "what colour is the circle?"
    page.unroute("**/vqa")
    page.click("#vqa-form button")
    sync_api.expect(page.locator("#answer")).to_have_text("orange")
    sync_api.expect(hint).to_be_hidden()

    not_understood = {"error": {"type": "invalid_request", "message": "the question was not understood"}}
    page.route("**/vqa", lambda route: route.fulfill(status=422, json=not_understood))  # a refusal: the same hint
    page.click("#vqa-form button")
    sync_api.expect(page.locator("#error")).to_contain_text("422: the question was not understood")
    sync_api.expect(hint).to_be_visible()
