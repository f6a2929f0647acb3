"""The watchdog for real: a server process whose device is stuck answers 503, then exits with status 3."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from service.watchdog import EXIT_STUCK, Watchdog
from tests.support.server import ServerProcess, error_of


def test_a_stuck_server_answers_503_then_exits_non_zero(checkpoint: Path) -> None:
    settings = {
        "MMSERVE_MODEL": str(checkpoint),
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_TORCH_THREADS": "1",
        "MMSERVE_STEP_TIMEOUT_S": "1",
    }
    with ServerProcess(settings, module="tests.support.stuck_server") as server:
        assert server.process is not None
        assert httpx.post(f"{server.url}/embed", json={"input": "fine"}, timeout=60).status_code == 200
        response = httpx.post(f"{server.url}/embed", json={"input": "hang"}, timeout=60)
        assert response.status_code == 503
        assert error_of(response)["message"].startswith("the device is stuck")
        assert server.process.wait(60) == EXIT_STUCK
        assert "the device is stuck" in server.log()


def test_the_watchdog_takes_a_dead_loop_for_dead_not_stuck() -> None:
    verdicts: list[float] = []
    long_ago = time.monotonic() - 3600  # a turn that "started" an hour ago and never ended: the loop died in it
    watchdog = Watchdog(lambda: long_ago, 0.05, verdicts.append, exit_after=False, alive=lambda: False)
    watchdog.start()
    watchdog.join(10)
    assert not watchdog.is_alive()  # it stopped watching
    assert verdicts == []  # and never called the dead loop stuck
