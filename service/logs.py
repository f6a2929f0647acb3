"""Logging: text or JSON lines, and one line per HTTP request.

The request line carries only fixed fields (time, request id, method, route, task, status, durations,
batch size, client address): never a body, an image, a text or a header, so never a key. Serving leaves
the task and the timings on its record of the request (`service.serving.call.Call`), handed to the line
through a context variable set by the middleware for each request.

Lines are formatted where they are logged and written to stderr by a thread of their own (a
`QueueHandler` and its `QueueListener`): a slow reader of stderr never blocks the event loop. If the
queue fills (stderr stalled for `LOG_QUEUE_LINES` lines), further lines are dropped, not waited for.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

ACCESS_LOGGER = "mmserve.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_QUEUE_LINES = 10_000


class _Timings(Protocol):
    @property
    def queue_ms(self) -> float: ...
    @property
    def inference_ms(self) -> float: ...
    @property
    def batch_size(self) -> int: ...


class _Record(Protocol):
    @property
    def task(self) -> str: ...
    @property
    def timings(self) -> _Timings | None: ...


@dataclass
class RequestLog:
    """What one request's line will say beyond the HTTP facts; filled by the route while it runs."""

    record: _Record | None = None


current_request: ContextVar[RequestLog | None] = ContextVar("mmserve_request_log", default=None)


def attach(record: _Record) -> None:
    """Let the request's log line read the route's record (a no-op outside a request)."""
    log = current_request.get()
    if log is not None:
        log.record = record


def request_fields(
    request_id: str, method: str, path: str, status: int, started: float, client: str | None, log: RequestLog
) -> dict[str, Any]:
    """The request line's fields, in a fixed order."""
    record = log.record
    timings = record.timings if record is not None else None
    return {
        "request_id": request_id,
        "method": method,
        "route": path,
        "task": record.task if record is not None else None,
        "status": status,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        "queue_ms": timings.queue_ms if timings else None,
        "inference_ms": timings.inference_ms if timings else None,
        "batch_size": timings.batch_size if timings else None,
        "client": client,
    }


def log_request(fields: dict[str, Any]) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    logging.getLogger(ACCESS_LOGGER).info("request %s", text, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line["message"] = "request"
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A queue handler that drops a line when the queue is full instead of blocking or reporting an error."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            DroppingQueueHandler.dropped += 1


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str, log_format: str) -> None:
    """The root logger: text (`asctime level name: message`) or JSON lines, written to stderr by a thread."""
    global _listener
    _stop_listener()
    lines: queue.Queue[logging.LogRecord] = queue.Queue(LOG_QUEUE_LINES)
    handler = DroppingQueueHandler(lines)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter("%(message)s"))  # formatted already, by the queue handler
    _listener = logging.handlers.QueueListener(lines, stderr)
    _listener.start()
    atexit.unregister(_stop_listener)
    atexit.register(_stop_listener)  # what is queued is written before the process exits
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def flush_logs(timeout_s: float = 2.0) -> None:
    """Write what is queued now (before `os._exit`, which runs no atexit hooks), waiting at most `timeout_s`
    for a slow stderr."""
    writer = threading.Thread(target=_stop_listener, name="mmserve-log-flush", daemon=True)
    writer.start()
    writer.join(timeout_s)


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
