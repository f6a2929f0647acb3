"""`python -m tests.support.slow_loading_server serve`: the service, except that loading the models first
waits `SLOW_LOADING_S` seconds (default 3), so a test can watch the `loading` state of a real process."""

from __future__ import annotations

import os
import time
from typing import Any

import service.engine
from service.cli import main

_real_load_model = service.engine.load_model


def _slow_load_model(*args: Any, **kwargs: Any) -> Any:
    time.sleep(float(os.environ.get("SLOW_LOADING_S", "3")))
    return _real_load_model(*args, **kwargs)


service.engine.load_model = _slow_load_model

if __name__ == "__main__":
    main()
