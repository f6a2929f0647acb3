"""Fixtures for end-to-end tests: real `python -m service` servers over TCP, on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import MultimodalModel, load_model


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def e2e_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random built-in checkpoint, written once per test session."""
    from model.testing import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("e2e-checkpoint"))


@pytest.fixture(scope="session")
def reference(e2e_checkpoint: Path) -> MultimodalModel:
    """The same checkpoint, loaded in the test process and called directly."""
    torch.set_num_threads(1)
    return load_model(str(e2e_checkpoint), "cpu")


@pytest.fixture(scope="session")
def base_settings(e2e_checkpoint: Path) -> dict[str, str]:
    return {"MMSERVE_MODEL": str(e2e_checkpoint), "MMSERVE_DEVICE": "cpu", "MMSERVE_TORCH_THREADS": "1"}
