"""Finding Hugging Face checkpoints: clear errors naming the model, family detection, device and dtype."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from model.api import ModelLoadError
from model.hf import load_hf_model
from model.hf.base import cut_rows, row_limits
from model.hf.loading import resolve_dtype

MISSING_HUB_ID = "mmserve-tests/no-such-model-anywhere"


def test_missing_hub_id_offline_fails_fast_naming_the_model(tmp_path: Path) -> None:
    # A fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    code = f"from model.hf import load_hf_model; load_hf_model({MISSING_HUB_ID!r})"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("model.api.ModelLoadError: cannot load model") and MISSING_HUB_ID in last_line
    assert time.monotonic() - started < 60


def test_missing_local_folder_names_the_model(tmp_path: Path) -> None:
    missing = tmp_path / "not-here"
    with pytest.raises(ModelLoadError, match="not-here"):
        load_hf_model(str(missing))


def test_unsupported_architecture_is_refused_clearly(tmp_path: Path) -> None:
    BertModel(
        BertConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=100
        )
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match=r"'bert'.*not a family"):
        load_hf_model(str(tmp_path / "bert"))


def test_default_dtype_is_fp32_on_cpu_and_bf16_on_cuda() -> None:
    assert resolve_dtype(torch.device("cpu"), None) == torch.float32
    assert resolve_dtype(torch.device("cpu"), torch.bfloat16) == torch.bfloat16
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert resolve_dtype(torch.device("cuda"), None) == expected


def test_row_limits_and_cutting() -> None:
    assert row_limits(3, 2) == [3, 3]
    assert row_limits([1, 4], 2) == [1, 4]
    with pytest.raises(ValueError):
        row_limits([1], 2)
    with pytest.raises(ValueError):
        row_limits(-1, 1)
    generated = torch.tensor([[5, 6, 2, 7], [8, 9, 10, 11]])
    assert cut_rows(generated, [4, 3], eos_ids=[2]) == [[5, 6], [8, 9, 10]]
