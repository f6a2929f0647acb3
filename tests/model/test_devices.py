"""One rule for devices and dtypes: "auto" means CUDA when there is a device, else the CPU, said in the log."""

import logging

import pytest
import torch

from model.devices import default_dtype, resolve_device


def test_auto_is_cuda_when_there_is_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_falls_back_to_the_cpu_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="model.devices"):
        assert resolve_device("auto") == torch.device("cpu")
    assert "no CUDA device found" in caplog.text


def test_a_named_device_is_taken_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("meta")) == torch.device("meta")
    assert not caplog.records
    with pytest.raises(RuntimeError):
        resolve_device("gpu")


def test_default_dtype_is_fp32_on_cpu_and_bf16_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert default_dtype(torch.device("cuda")) == torch.float16
