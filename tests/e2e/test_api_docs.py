"""The interactive API docs, `/docs` (Swagger UI) and `/redoc`, in a real browser with no network: Debian's
chromium, headless, driven by Playwright, against a real server on the tiny checkpoint. Every request the
pages make to another host is refused and recorded, so a page that needs a CDN fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.browser import WAIT_MS, browser_page, needs_chromium, sync_api
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(base_settings) as server:
        yield server


class OfflinePage:
    """A browser page that can reach only the server's own host; what it tried elsewhere is in `foreign`."""

    def __init__(self, page: sync_api.Page, host: str) -> None:
        self.page = page
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.refused: list[str] = []  # by the pages' Content-Security-Policy, before any request is made
        page.route("**/*", lambda route: self._route(route, host))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: sync_api.ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.refused.append(message.text)

    def _route(self, route: sync_api.Route, host: str) -> None:
        url = route.request.url
        if urlsplit(url).netloc == host:
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort("internetdisconnected")


@pytest.fixture
def offline(server: ServerProcess) -> Iterator[OfflinePage]:
    with browser_page(1280, 900) as page:
        offline = OfflinePage(page, urlsplit(server.url).netloc)
        yield offline
        assert offline.foreign == [], f"the page tried to reach other hosts: {offline.foreign}"
        assert offline.errors == [], offline.errors


def _execute(page: sync_api.Page, path: str) -> sync_api.Locator:
    """Open the operation on `path`, "Try it out", "Execute": its live response."""
    operation = page.locator(".opblock", has=page.locator(f".opblock-summary-path[data-path='{path}']"))
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    return operation.locator(".live-responses-table tr.response")


def test_swagger_ui_renders_and_sends_requests_offline(server: ServerProcess, offline: OfflinePage) -> None:
    page = offline.page
    page.goto(f"{server.url}/docs")
    sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("mmserve", timeout=WAIT_MS)
    sync_api.expect(page.locator(".opblock-summary-path[data-path='/caption']")).to_be_visible(timeout=WAIT_MS)

    health = _execute(page, "/health")
    sync_api.expect(health.locator(".response-col_status")).to_have_text("200", timeout=WAIT_MS)
    sync_api.expect(health.locator(".response-col_description")).to_contain_text('"status": "ok"', timeout=WAIT_MS)

    embed = _execute(page, "/embed")  # the schema's first example: two texts
    sync_api.expect(embed.locator(".response-col_status")).to_have_text("200", timeout=WAIT_MS)
    sync_api.expect(embed.locator(".response-col_description")).to_contain_text('"embedding"', timeout=WAIT_MS)
    assert offline.refused == [], offline.refused


def test_redoc_renders_offline(server: ServerProcess, offline: OfflinePage) -> None:
    page = offline.page
    # Its one outside resource, Redocly's logo in the sidebar, is refused by the page's policy, never
    # requested (offline.foreign stays empty); ReDoc then leaves it out.
    with page.expect_console_message(lambda message: "Content Security Policy" in message.text) as refusal:
        page.goto(f"{server.url}/redoc")
    assert "https://cdn.redoc.ly/redoc/logo-mini.svg" in refusal.value.text
    sync_api.expect(page.locator(".api-info h1")).to_contain_text("mmserve", timeout=WAIT_MS)
    sync_api.expect(page.get_by_text("/embed").first).to_be_attached(timeout=WAIT_MS)
    sync_api.expect(page.locator("img[alt='redocly logo']")).to_have_count(0, timeout=WAIT_MS)
    assert len(offline.refused) == 1, offline.refused
