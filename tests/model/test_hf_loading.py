"""Finding Hugging Face checkpoints: clear errors naming the model, family detection, device and dtype."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from model.api import ModelLoadError
from model.hf import load_hf_model
from model.hf.base import cut_rows
from model.inputs import row_limits
from tests.support import hf_checkpoints

MISSING_HUB_ID = "mmserve-tests/no-such-model-anywhere"


# Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE once, at import. The load is timed
# inside it, without the imports, so that a busy machine does not make the check flaky.
OFFLINE_LOAD = f"""
import time
from model.api import ModelLoadError
from model.hf import load_hf_model
started = time.monotonic()
try:
    load_hf_model({MISSING_HUB_ID!r})
except ModelLoadError as e:
    print(f"{{time.monotonic() - started:.3f}}")
    print(e)
"""


def test_missing_hub_id_offline_fails_fast_naming_the_model(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOAD],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=repo_root,
    )
    seconds, message = result.stdout.strip().split("\n", 1)
    assert message.startswith(f"cannot load model {MISSING_HUB_ID!r}") and "HF_HUB_OFFLINE" in message
    assert float(seconds) < 20, "an offline miss must fail at once, not wait on the network"


def test_missing_local_folder_names_the_model(tmp_path: Path) -> None:
    missing = tmp_path / "not-here"
    with pytest.raises(ModelLoadError, match="not-here"):
        load_hf_model(str(missing))


def test_unsupported_architecture_is_refused_clearly(tmp_path: Path) -> None:
    BertModel(
        BertConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match=r"'bert'.*not a family"):
        load_hf_model(str(tmp_path / "bert"))


def test_row_limits_and_cutting() -> None:
    assert row_limits(3, 2) == [3, 3]
    assert row_limits([1, 4], 2) == [1, 4]
    with pytest.raises(ValueError):
        row_limits([1], 2)
    with pytest.raises(ValueError):
        row_limits(-1, 1)
    generated = torch.tensor([[5, 6, 2, 7], [8, 9, 10, 11]])
    assert cut_rows(generated, [4, 3], eos_ids=[2]) == [[5, 6], [8, 9, 10]]


def test_every_tiny_family_builds_from_the_command_line_and_is_detected(tmp_path: Path) -> None:
    hf_checkpoints.main([str(tmp_path)])
    expected_tasks = {
        "blip-captioning": {"caption"},
        "blip-vqa": {"vqa"},
        "clip": {"embed_text", "embed_image"},
        "siglip": {"embed_text", "embed_image"},
        "llava": {"caption", "vqa"},
        "sentence-transformer": {"embed_text"},
        "whisper": {"transcribe"},
    }
    assert set(expected_tasks) == set(hf_checkpoints.BUILDERS)
    for family, tasks in expected_tasks.items():
        assert load_hf_model(str(tmp_path / family)).tasks == tasks, family
