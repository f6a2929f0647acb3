"""schemathesis over the service's own OpenAPI document, against a real server: no 5xx, answers as documented.

The CLI runs every default check (no server error, status codes, content types and bodies as the
schema says, schema-valid requests accepted and schema-violating ones refused) with the settings in
tests/fuzz/schemathesis.toml. A bounded run here; the longer one (docs/reliability.md) is the same
command with more examples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")


def schemathesis_command(url: str, max_examples: int, seed: int = 1) -> list[str]:
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    return [
        executable, "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
        "--generation-database", "none", "--no-color",
    ]  # fmt: skip


def test_schemathesis_finds_nothing(fuzz_server: ServerProcess) -> None:
    result = subprocess.run(
        schemathesis_command(fuzz_server.url, max_examples=30), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "FAILURES" not in result.stdout and " passed" in result.stdout
    # A warning may remain: with `stream` and the question's rules, most of /vqa's *generated* bodies are
    # negative cases that schemathesis expects refused (and they are), which its heuristic reports as
    # "mostly rejected". Failures, not that heuristic, decide.
    assert " 13 selected / 13 total" in result.stdout  # every operation was tried
