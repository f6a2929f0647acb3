"""A page in a real browser for the end-to-end tests: Debian's chromium, headless, driven by Playwright.

No browser is downloaded: without chromium (apt-get install chromium; .ci/run installs it) the test is
skipped, with the reason in pytest's summary.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install '.[test]'")

CHROMIUM = shutil.which("chromium")
NO_CHROMIUM = "Debian's chromium is not installed: apt-get install chromium (.ci/run installs it)"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)  # skips before any fixture starts
WAIT_MS = 60_000  # for a page's actions and waits: the machine may be busy


def fake_microphone(wav: Path) -> list[str]:
    """Chromium's arguments for a microphone, allowed without asking, that plays `wav` (16-bit PCM) from its start
    each time it is opened (`%noloop`: once, where it would otherwise play again and again)."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ]


@contextmanager
def browser_page(width: int, height: int, args: Sequence[str] = ()) -> Iterator[sync_api.Page]:
    """A fresh page of `width` × `height` CSS pixels in a new headless chromium run with `args` too; skips the
    test without one."""
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage", *args], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()
