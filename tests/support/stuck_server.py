"""`python -m tests.support.stuck_server serve`: the service, except that embedding the text "hang" never
finishes (as on a stuck device). For the watchdog's test that the process exits non-zero."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from service.cli import main
from service.engine import Engine

_real_run = Engine.run


def _run(self: Engine, task: str, payloads: Sequence[Any], progress: Any = None) -> list[Any]:
    if task == "embed_text" and self.prepare_text(task, "hang") in payloads:
        threading.Event().wait()  # forever
    return _real_run(self, task, payloads, progress)


Engine.run = _run  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
