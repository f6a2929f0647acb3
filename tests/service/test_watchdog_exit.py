"""The watchdog for real: a server process whose device is stuck answers 503, then exits with status 3; one
whose generation is slow but keeps stepping is left alone."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx

from service.watchdog import EXIT_STUCK, Watchdog
from tests.support.hf_checkpoints import build_blip_captioning, sample_images
from tests.support.server import ServerProcess, encode_image, error_of

HANG_MAX_NEW_TOKENS = 13  # tests.support.slow_steps_server's (not imported here: importing it patches BLIP)


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
def test_a_long_generation_that_keeps_stepping_is_answered_and_a_stuck_step_still_exits(tmp_path: Path) -> None:
    """A whole-batch Hugging Face caption of 12 steps of 0.25 s runs three times the 1 s timeout and is
    answered, since every step reports progress; a later caption whose fifth step hangs is still declared
    stuck (503, exit 3), although its first steps progressed."""
    settings = {
        "MMSERVE_MODEL": str(build_blip_captioning(tmp_path / "blip")),
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_TORCH_THREADS": "1",
        "MMSERVE_STEP_TIMEOUT_S": "1",
    }
    image = base64.b64encode(encode_image(sample_images(1)[0])).decode()
    with ServerProcess(settings, module="tests.support.slow_steps_server") as server:
        assert server.process is not None
        slow = httpx.post(f"{server.url}/caption", json={"image": image, "max_new_tokens": 12}, timeout=60)
        assert slow.status_code == 200, slow.text
        assert slow.json()["caption"]
        # a precondition, not a timing claim: 12 steps sleep 3 s in all, three times the watchdog's timeout
        assert slow.elapsed.total_seconds() > 2
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert server.process.poll() is None
        stuck = httpx.post(
            f"{server.url}/caption", json={"image": image, "max_new_tokens": HANG_MAX_NEW_TOKENS}, timeout=60
        )
        assert stuck.status_code == 503
        assert error_of(stuck)["message"].startswith("the device is stuck")
        assert server.process.wait(60) == EXIT_STUCK
