"""Fixtures for end-to-end tests: real `python -m service` servers over TCP, on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import MultimodalModel, load_model


@pytest.fixture(scope="session")
def reference(tiny_checkpoint_dir: Path) -> MultimodalModel:
    """The servers' checkpoint, loaded in the test process and called directly."""
    torch.set_num_threads(1)
    return load_model(str(tiny_checkpoint_dir), "cpu")


@pytest.fixture(scope="session")
def base_settings(tiny_checkpoint_dir: Path) -> dict[str, str]:
    """Settings for a server on the session's tiny checkpoint (tests/conftest.py writes it)."""
    return {
        "MMSERVE_MODEL": str(tiny_checkpoint_dir),
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_TORCH_THREADS": "1",
        "MMSERVE_GENERATE_MODEL": "none",  # no text-to-image unless a test names a generator
    }
