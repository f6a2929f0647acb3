"""Where a model runs and in what precision: one rule for the built-in model, the Hugging Face adapters,
training and the service."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def resolve_device(spec: str | torch.device) -> torch.device:
    """`"auto"` → CUDA when there is a device, else the CPU (with a warning); anything else as torch reads it."""
    if isinstance(spec, torch.device):
        return spec
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda")
    logger.warning("no CUDA device found: running on the CPU, which is much slower")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 is far slower on CPUs without bf16 units); bf16, else fp16, on CUDA."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
