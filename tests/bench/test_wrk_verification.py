"""The benchmark's load script verifies every response: wrong answers and errors are counted, never timed.

Each test runs the real wrk with bench/verify.lua for about a second against a stub server whose answers
the test controls. Skipped where wrk is not installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import wrk
from bench.workload import Request, write_lua
from tests.bench.stub import stub_server

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk; .ci/run installs it)"
)


def embed_requests() -> list[Request]:
    return [Request("embed", "/embed", json.dumps({"input": f"text {i}"}), [0.1 * i, 0.5], dim=4) for i in range(4)]


def embedding(vector: list[float]) -> dict[str, Any]:
    return {"data": [{"index": 0, "embedding": vector}], "model": "stub", "dim": len(vector)}


def right_embedding(body: dict[str, Any]) -> list[float]:
    i = int(body["input"].split()[1])
    return [0.1 * i, 0.5, 0.0, 0.0]


def test_right_answers_are_counted_and_timed(tmp_path: Path) -> None:
    data = write_lua(embed_requests(), tmp_path / "embed.lua")
    with stub_server(lambda body: (200, embedding(right_embedding(body)))) as url:
        result = wrk.run(url, data, connections=2, warmup_s=0.2, measure_s=1.0)
    assert result.ok > 0
    assert result.errors == 0, result.examples
    assert len(result.latencies_ms) == result.ok
    assert result.percentile_ms(50) > 0


def test_a_wrong_embedding_is_an_error(tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        vector = right_embedding(body)
        if body["input"] == "text 3":
            vector[1] += 0.01  # off by more than the tolerance
        return 200, embedding(vector)

    data = write_lua(embed_requests(), tmp_path / "embed.lua", tolerance=1e-3)
    with stub_server(answer) as url:
        result = wrk.run(url, data, connections=2, warmup_s=0.2, measure_s=1.0)
    assert result.ok > 0 and result.mismatches > 0
    assert result.mismatches < result.ok  # one request in four is wrong
    assert "component 2" in result.examples[0]
    assert len(result.latencies_ms) == result.ok  # wrong answers are not timed


def test_an_embedding_of_the_wrong_length_is_an_error(tmp_path: Path) -> None:
    data = write_lua(embed_requests(), tmp_path / "embed.lua")
    with stub_server(lambda body: (200, embedding([*right_embedding(body), 0.0]))) as url:
        result = wrk.run(url, data, connections=1, warmup_s=0.0, measure_s=1.0)
    assert result.ok == 0 and result.mismatches > 0
    assert "5 components, not 4" in result.examples[0]


def test_a_wrong_caption_and_a_non_200_are_errors(tmp_path: Path) -> None:
    requests = [
        Request("caption", "/caption", json.dumps({"image": "x", "max_new_tokens": n}), f"a caption of {n}")
        for n in (4, 8, 16)
    ]

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        n = body["max_new_tokens"]
        if n == 16:
            return 503, {"error": {"type": "not_ready", "message": "loading"}}
        return 200, {"caption": f"a caption of {n}" if n == 4 else "a different caption", "model": "stub"}

    data = write_lua(requests, tmp_path / "caption.lua")
    with stub_server(answer) as url:
        result = wrk.run(url, data, connections=2, warmup_s=0.0, measure_s=1.0)
    assert result.ok > 0 and result.mismatches > 0 and result.status_errors > 0
    assert result.errors == result.mismatches + result.status_errors + result.socket_errors


def test_a_wrong_transcript_is_an_error(tmp_path: Path) -> None:
    requests = [Request("transcribe", "/transcribe", json.dumps({"audio": f"wav {n}"}), f"heard {n}") for n in range(3)]

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        n = int(body["audio"].split()[1])
        text = f"heard {n}" if n != 2 else "misheard"
        return 200, {"text": text, "model": "stub", "language": None, "duration": 1.0}

    data = write_lua(requests, tmp_path / "transcribe.lua")
    with stub_server(answer) as url:
        result = wrk.run(url, data, connections=2, warmup_s=0.0, measure_s=1.0)
    assert result.ok > 0 and result.mismatches > 0 and result.status_errors == 0
    assert "text misheard ~= heard 2" in result.examples[0]
    with stub_server(lambda body: (200, {"caption": "heard 0", "model": "stub"})) as url:
        result = wrk.run(url, data, connections=1, warmup_s=0.0, measure_s=1.0)
    assert result.ok == 0 and "no text" in result.examples[0]  # a caption's field is not a transcript


def test_a_response_without_the_request_id_cannot_be_verified(tmp_path: Path) -> None:
    data = write_lua(embed_requests(), tmp_path / "embed.lua")
    with stub_server(lambda body: (200, embedding(right_embedding(body))), echo_id=False) as url:
        result = wrk.run(url, data, connections=1, warmup_s=0.0, measure_s=1.0)
    assert result.ok == 0 and result.mismatches > 0
    assert "X-Request-ID" in result.examples[0]


def test_a_limited_run_stops_after_its_requests(tmp_path: Path) -> None:
    data = write_lua(embed_requests(), tmp_path / "embed.lua")
    with stub_server(lambda body: (200, embedding(right_embedding(body)))) as url:
        result = wrk.run(url, data, connections=4, limit=60)
    assert 60 <= result.ok <= 60 + 4


def test_the_open_loop_paces_its_requests(tmp_path: Path) -> None:
    """At 20 requests/s a one-second window holds about 20 answers, where a closed loop would send hundreds."""
    data = write_lua(embed_requests(), tmp_path / "embed.lua")
    with stub_server(lambda body: (200, embedding(right_embedding(body)))) as url:
        result = wrk.run(url, data, connections=8, warmup_s=0.2, measure_s=1.0, rate=20)
    assert 0 < result.ok <= 2 * 20 + 8
    assert result.errors == 0
