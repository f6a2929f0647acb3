"""`mmserve caption|vqa|embed` against a real server with API keys, and that server's JSON request lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model import MultimodalModel
from tests.support.server import REPO_ROOT, ServerProcess, encode_image, free_port, noise_image

pytestmark = [pytest.mark.slow]

KEY = "sk-cli-test-key-5f3a"


@pytest.fixture(scope="module")
def server(base_settings: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# one per line\n{KEY}\nsk-another-key\n")
    settings = {
        **base_settings,
        "MMSERVE_API_KEYS_FILE": str(keys),
        "MMSERVE_LOG_FORMAT": "json",
        "MMSERVE_LOG_LEVEL": "info",
    }
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "scene.png"
    path.write_bytes(encode_image(noise_image(3)))
    return path


def mmserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO_ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_caption_and_vqa_print_the_answers(server: ServerProcess, scene: Path, reference: MultimodalModel) -> None:
    from service.images import decode_image

    image = decode_image(scene.read_bytes(), 10**8)
    done = mmserve("caption", str(scene), "--url", server.url, "--api-key", KEY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == reference.caption([image], 32)[0]
    env = {"MMSERVE_URL": server.url, "MMSERVE_API_KEY": KEY}  # the defaults come from the environment
    done = mmserve("vqa", str(scene), "what colour is the circle?", "--json", env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["answer"] == reference.answer([image], ["what colour is the circle?"])[0]
    assert answer["timings"]["batch_size"] >= 1
    done = mmserve("caption", str(scene), str(scene), env=env)
    assert done.stdout.splitlines() == [f"{scene}: {reference.caption([image], 32)[0]}"] * 2


def test_embed_prints_vectors_and_similarities(server: ServerProcess) -> None:
    done = mmserve("embed", "a red circle", "a blue square", "--url", server.url, "--api-key", KEY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("384-dimensional embeddings from ")
    assert "'a red circle': [" in lines[1] and "(norm 1.000)" in lines[1]
    assert lines[3] == "cosine similarity:"
    assert lines[4].split()[1] == "1.000"  # a text is itself
    done = mmserve("embed", "a red circle", "--json", "--url", server.url, "--api-key", KEY)
    assert len(json.loads(done.stdout)["data"][0]["embedding"]) == 384


def test_errors_give_the_servers_message_and_an_exit_code(server: ServerProcess, scene: Path) -> None:
    done = mmserve("embed", "a red circle", "--url", server.url)
    assert done.returncode == 1
    missing = "mmserve: 401 Unauthorized: missing API key: send the header 'Authorization: Bearer <key>'"
    assert done.stderr.strip() == missing
    done = mmserve("caption", str(scene), "--url", server.url, "--api-key", "wrong")
    assert (done.returncode, done.stderr.strip()) == (1, "mmserve: 401 Unauthorized: invalid API key")
    done = mmserve("vqa", str(scene), " ", "--url", server.url, "--api-key", KEY)
    assert done.returncode == 1 and "422 Unprocessable" in done.stderr and "question must not be blank" in done.stderr
    done = mmserve("caption", str(scene.with_name("missing.png")), "--url", server.url)
    assert done.returncode == 2 and "cannot read" in done.stderr and "missing.png" in done.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    done = mmserve("embed", "hi", "--url", nobody)
    assert done.returncode == 3
    assert done.stderr.startswith(f"mmserve: cannot reach the server at {nobody}") and "Traceback" not in done.stderr


def test_one_json_line_per_request_and_no_secrets(server: ServerProcess, scene: Path) -> None:
    secret_text = "the-text-to-embed-must-not-be-logged"
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "req-json-log-1"}
    response = httpx.post(f"{server.url}/embed", json={"input": [secret_text, "two"]}, headers=headers, timeout=60)
    assert response.status_code == 200
    image = {"image": ("scene.png", scene.read_bytes(), "image/png")}
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "req-json-log-2"}
    assert httpx.post(f"{server.url}/caption", files=image, headers=headers, timeout=60).status_code == 200
    headers = {"Authorization": "Bearer not-the-key", "X-Request-ID": "req-json-log-3"}
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401

    wanted = {"req-json-log-1", "req-json-log-2", "req-json-log-3"}
    for _ in range(200):  # a line is written once its response is sent: the last may trail the client
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        requests = {line["request_id"]: line for line in lines if line["logger"] == "mmserve.access"}
        if wanted <= set(requests):
            break
        time.sleep(0.05)
    assert wanted <= set(requests), server.log()
    embed = requests["req-json-log-1"]
    assert {k: embed[k] for k in ("method", "route", "task", "status", "message")} == {
        "method": "POST", "route": "/embed", "task": "embed_text", "status": 200, "message": "request",
    }
    assert embed["batch_size"] >= 1 and embed["duration_ms"] >= embed["inference_ms"] > 0 and embed["queue_ms"] >= 0
    assert embed["client"].startswith("127.0.0.1:") and embed["time"]
    assert requests["req-json-log-2"]["task"] == "caption" and requests["req-json-log-2"]["status"] == 200
    refused = requests["req-json-log-3"]
    assert (refused["route"], refused["status"], refused["task"]) == ("/v1/models", 401, None)
    assert refused["batch_size"] is None
    log = server.log()
    for secret in (KEY, "not-the-key", secret_text, "iVBORw0KGgo"):
        assert secret not in log
