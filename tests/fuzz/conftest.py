"""A real server over TCP on the tiny checkpoint, shared by the fuzz tests, and the model to check its answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model import MultimodalModel, load_model
from tests.support.server import ServerProcess

# The server logs at debug level, so that a test can check that no request body reaches any log line.
MARKER = "body-marker-5f3c9a"


@pytest.fixture(scope="session")
def fuzz_server(tiny_checkpoint_dir: Path, tiny_whisper_dir: Path, tiny_generator_dir: Path) -> Iterator[ServerProcess]:
    settings = {
        "MMSERVE_MODEL": str(tiny_checkpoint_dir),
        "MMSERVE_TRANSCRIBE_MODEL": str(tiny_whisper_dir),  # so the audio routes are served, not 501
        "MMSERVE_GENERATE_MODEL": str(tiny_generator_dir),  # and the text-to-image ones
        "MMSERVE_TEXT_TO_IMAGE_MAX_STEPS": "20",  # (the document says so: no request outlasts the deadline)
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_TORCH_THREADS": "1",
        "MMSERVE_LOG_LEVEL": "debug",
        "MMSERVE_REQUEST_TIMEOUT_S": "4",  # a slow body is cut off by the request deadline
        "PYTHONUNBUFFERED": "1",  # each log line reaches the file at once (test_no_body_in_the_log reads it)
    }
    with ServerProcess(settings) as server:
        yield server


@pytest.fixture(scope="session")
def reference(tiny_checkpoint_dir: Path) -> MultimodalModel:
    torch.set_num_threads(1)
    return load_model(str(tiny_checkpoint_dir), "cpu")
