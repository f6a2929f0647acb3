"""Finding and loading Hugging Face checkpoints: configs, side files, weights, device and dtype.

A name is a local folder or a hub id; hub ids resolve through transformers' own cache and its offline
rules (`HF_HUB_OFFLINE=1`, or no network, means the local cache only). Whatever goes wrong while
finding or reading a checkpoint surfaces as one `ModelLoadError` that names the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoProcessor, PretrainedConfig, PreTrainedModel
from transformers.utils.hub import cached_file

from model.api import ModelLoadError

logger = logging.getLogger(__name__)


def load_config(name: str) -> PretrainedConfig:
    """The checkpoint's config; `ModelLoadError` naming the model if it cannot be found or read."""
    try:
        config: PretrainedConfig = AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:  # not found, offline with an empty cache, unknown model_type
        raise ModelLoadError(f"cannot load model {name!r}{_where(name)}: {one_line(e)}") from e
    return config


def load_processor(name: str, loader: Any = AutoProcessor, **kwargs: Any) -> Any:
    """The processor (with `AutoTokenizer` as `loader`: the tokenizer); `ModelLoadError` if missing."""
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load the processor of model {name!r}: {one_line(e)}") from e


def _where(name: str) -> str:
    if Path(name).is_dir():
        return ""
    return (
        " (not a local folder, nor a hub id found on the hub or in the local Hugging Face cache;"
        " with HF_HUB_OFFLINE=1 or no network the cache is all there is)"
    )


def one_line(error: BaseException) -> str:
    """An exception's message on one line (transformers' messages span several)."""
    return " ".join(str(error).split())


def find_file(name: str, filename: str, subfolder: str = "") -> Path | None:
    """A side file of the checkpoint (local folder or hub cache), or None when it has none."""
    local = Path(name)
    if local.is_dir():
        path = local / subfolder / filename
        return path if path.is_file() else None
    resolved = cached_file(
        name,
        filename,
        subfolder=subfolder,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    return Path(resolved) if resolved else None


def read_json(name: str, filename: str, subfolder: str = "") -> dict[str, Any] | list[Any] | None:
    path = find_file(name, filename, subfolder)
    return None if path is None else json.loads(path.read_text(encoding="utf-8"))


def load_pretrained(
    model_class: Any, name: str, device: torch.device, dtype: torch.dtype, **kwargs: Any
) -> PreTrainedModel:
    """Weights onto `device` in `dtype`, in eval mode, with SDPA attention where the architecture has it.

    The weights load straight onto `device` (transformers' `device_map`), so a large model does not need
    twice its size in host memory; where that is not possible here (no accelerate), it loads on the CPU
    and moves.
    """
    try:
        try:
            model: PreTrainedModel = _from_pretrained(
                model_class, name, device, dtype=dtype, attn_implementation="sdpa", **kwargs
            )
        except (ValueError, ImportError) as e:  # this architecture has no SDPA path: use its default
            logger.info("model %s: SDPA attention unavailable (%s); using the default attention", name, e)
            model = _from_pretrained(model_class, name, device, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the weights of model {name!r}: {one_line(e)}") from e
    # transformers wraps `to` and `eval` (functools.wraps), and the checker then reads `device` as `self`
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model


def _from_pretrained(model_class: Any, name: str, device: torch.device, **kwargs: Any) -> PreTrainedModel:
    if device.type == "cpu":
        return model_class.from_pretrained(name, **kwargs)  # type: ignore[no-any-return]
    try:
        return model_class.from_pretrained(name, device_map=str(device), **kwargs)  # type: ignore[no-any-return]
    except ImportError as e:  # device_map wants accelerate in some transformers versions
        if "accelerate" not in str(e).lower():
            raise
        logger.info("model %s: loading on the CPU, then moving it (%s)", name, one_line(e))
        return model_class.from_pretrained(name, **kwargs)  # type: ignore[no-any-return]


def text_position_limit(config: PretrainedConfig, default: int = 512) -> int:
    """How many text tokens the (text) model can take: its max_position_embeddings, else `default`."""
    text_config = getattr(config, "text_config", None) or config
    limit = getattr(text_config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else default
