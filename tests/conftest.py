"""Shared fixtures: a tiny random built-in checkpoint and Whisper, and a frozen text tower loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.support.builtin_checkpoint import tiny_checkpoint
from tests.support.hf_checkpoints import build_whisper

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# The many servers a test run starts in this one process would each freeze every object alive at their start
# (`MMSERVE_GC_FREEZE`), garbage of earlier tests included; the tests of that setting turn it on themselves.
os.environ.setdefault("MMSERVE_GC_FREEZE", "false")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The async tests (service, e2e) run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-builtin"))


@pytest.fixture(scope="session")
def tiny_audio_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random built-in checkpoint with an audio tower (`tiny+audio`): it transcribes too."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-builtin-audio"), preset="tiny+audio")


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random multilingual Whisper (4-second window), built once per session."""
    return build_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def text_tower():  # type: ignore[no-untyped-def]
    from model.text import TextTower

    return TextTower()


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint_dir: Path, text_tower):  # type: ignore[no-untyped-def]
    from model.checkpoint import load_builtin

    return load_builtin(tiny_checkpoint_dir, "cpu", text_tower=text_tower)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable Diffusion pipeline folder (DDIM), built once per session."""
    from tests.support.diffusion_checkpoints import build_stable_diffusion

    return build_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random built-in text-to-image generator folder (pixels folded 2×2, flow matching)."""
    from tests.support.diffusion_checkpoints import build_builtin_generator

    return build_builtin_generator(tmp_path_factory.mktemp("tiny-generator"))
