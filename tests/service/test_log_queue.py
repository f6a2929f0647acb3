"""Log lines reach stderr through a queue and a writer thread: a stalled stderr never blocks whoever logs."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest

from service import logs


class StalledStream(io.StringIO):
    """A stderr that nobody reads until `flowing` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = threading.Event()

    def write(self, text: str) -> int:
        self.flowing.wait()
        return super().write(text)


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        logs._stop_listener()
        root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("restored_root")
def test_a_stalled_stderr_does_not_block_logging() -> None:
    logs.configure_logging("info", "json")
    assert logs._listener is not None
    stream = StalledStream()
    [writer] = logs._listener.handlers
    assert isinstance(writer, logging.StreamHandler)
    writer.setStream(stream)
    logger = logging.getLogger("mmserve.test")
    done = threading.Event()

    def log_lines() -> None:
        for i in range(200):
            logs.log_request({"request_id": f"r-{i}", "status": 200})
        logger.error("failed", exc_info=ValueError("boom"))
        done.set()

    threading.Thread(target=log_lines, daemon=True).start()
    assert done.wait(30), "logging blocked on a stalled stderr"  # a liveness check, not a timing
    assert stream.getvalue() == ""  # nothing written yet: the writer thread waits for stderr
    stream.flowing.set()
    logs._stop_listener()  # writes what is queued, then stops
    lines = stream.getvalue().splitlines()
    assert '"request_id": "r-0"' in lines[0] and '"request_id": "r-199"' in lines[199]
    assert '"exception": "ValueError: boom"' in stream.getvalue()
