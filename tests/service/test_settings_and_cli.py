"""Settings from the environment (read when asked, never at import), per-task routing, and the CLI."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest
from pydantic import ValidationError

import service.cli
from service.cli import build_parser, main
from service.settings import BatchPolicy, Settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSERVE_CAPTION_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("MMSERVE_EMBED_TEXT_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("MMSERVE_PORT", "9001")
    settings = Settings()
    assert settings.batch_policy("caption") == BatchPolicy(max_batch_size=3, max_wait_ms=0.0)
    assert settings.batch_policy("embed_text") == BatchPolicy(max_batch_size=64, max_wait_ms=0.5)
    assert settings.port == 9001
    assert Settings(port=1234).port == 1234  # arguments win over the environment


def test_defaults() -> None:
    settings = Settings()
    assert (settings.model, settings.device, settings.dtype, settings.port) == (
        "builtin",
        "auto",
        "auto",
        8000,
    )
    assert settings.max_embed_inputs == 256


def test_decoding_step_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """None (the default): off (`DecodeOptions.resolve`); else what was said."""
    assert (Settings().fixed_shape_step, Settings().cuda_graphs) == (None, None)
    monkeypatch.setenv("MMSERVE_CUDA_GRAPHS", "false")
    monkeypatch.setenv("MMSERVE_FIXED_SHAPE_STEP", "true")
    assert (Settings().fixed_shape_step, Settings().cuda_graphs) == (True, False)


def test_the_blank_transcript_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """None (the default): the model's own (`load_builtin`); else a probability."""
    assert Settings().transcript_blank_min_prob is None
    monkeypatch.setenv("MMSERVE_TRANSCRIPT_BLANK_MIN_PROB", "0")
    assert Settings().transcript_blank_min_prob == 0.0
    monkeypatch.setenv("MMSERVE_TRANSCRIPT_BLANK_MIN_PROB", "1.5")
    with pytest.raises(ValidationError, match="transcript_blank_min_prob"):
        Settings()


def test_per_task_models_default_to_model() -> None:
    settings = Settings(model="base", embed_model="clip")
    assert [settings.model_for(task) for task in ("caption", "vqa", "embed_text", "embed_image")] == [
        "base",
        "base",
        "clip",
        "clip",
    ]


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValidationError, match="max_embed_inputs must not exceed queue_capacity"):
        Settings(queue_capacity=10, max_embed_inputs=11)
    with pytest.raises(ValidationError, match="dtype"):
        Settings(dtype="int8")  # type: ignore[arg-type]


def test_nothing_is_read_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSERVE_PORT", "not a port")
    for name in [m for m in sys.modules if m == "service" or m.startswith("service.")]:
        monkeypatch.delitem(sys.modules, name)
    import service.app  # noqa: F401  (importing must not read the broken variable)

    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_serve_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(service.cli, "serve", seen.update)
    main(["serve", "--port", "9100", "--model", "ckpt", "--device", "cpu"])
    assert seen == {
        "host": None,
        "port": 9100,
        "model": "ckpt",
        "device": "cpu",
        "dtype": None,
        "log_level": None,
    }
    assert build_parser().parse_args(["serve"]).command == "serve"


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_hand_over_their_arguments(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    received: list[list[str]] = []
    fake = types.ModuleType(f"model.{command}")
    fake.main = received.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, f"model.{command}", fake)
    monkeypatch.setattr(sys.modules["model"], command, fake, raising=False)
    main([command, "--steps", "10", "--help"])
    assert received == [["--steps", "10", "--help"]]


def test_the_app_bounds_onednn_kernel_cache_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each audio length is a new oneDNN kernel; its default cache (1,024) let RSS creep in the soak."""
    from service.app import create_app

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    create_app(Settings())
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")  # an operator's choice is kept
    create_app(Settings())
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
