"""mmserve's models: the built-in multimodal Transformer and adapters for Hugging Face checkpoints, and
text-to-image generators (the built-in one, and Stable Diffusion folders).

The service imports only from here: `load_model`, `load_image_generator`, the protocols of `model.api` and
their errors (`UnknownQuestion`: a question the built-in model does not know), `resolve_device` (what "auto"
means), `speech_chunks` (a long recording cut at pauses to fit a model's window), and what says whether a
transcript was understood (`model.understanding`, the detector's `no_speech_in`, the length bound
`transcript_token_limit`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.api import (
    ALL_TASKS,
    UNDERSTANDING_TASKS,
    AudioSpec,
    ImageGenerator,
    KnowsQuestions,
    ModelLoadError,
    MultimodalModel,
    Task,
    UnknownQuestion,
    UnsupportedTask,
)
from model.devices import default_dtype, resolve_device
from model.loops import transcript_token_limit
from model.speech_chunks import ChunkingConfig, SpeechChunk, speech_chunks
from model.understanding import (
    MAX_NO_SPEECH_PROB,
    MIN_AVG_LOGPROB,
    Criterion,
    Heard,
    compression_ratio,
    default_criteria,
    refusal,
)
from model.vad import no_speech_in

__all__ = [
    "ALL_TASKS",
    "BUILTIN",
    "MAX_NO_SPEECH_PROB",
    "MIN_AVG_LOGPROB",
    "UNDERSTANDING_TASKS",
    "AudioSpec",
    "ChunkingConfig",
    "Criterion",
    "Heard",
    "ImageGenerator",
    "KnowsQuestions",
    "ModelLoadError",
    "MultimodalModel",
    "SpeechChunk",
    "Task",
    "UnknownQuestion",
    "UnsupportedTask",
    "compression_ratio",
    "default_criteria",
    "default_dtype",
    "load_image_generator",
    "load_model",
    "no_speech_in",
    "refusal",
    "resolve_device",
    "speech_chunks",
    "transcript_token_limit",
]

BUILTIN = "builtin"


def load_model(
    path_or_name: str | Path = BUILTIN,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    fixed_shape_step: bool | None = None,
    cuda_graphs: bool | None = None,
    blank_min_prob: float | None = None,
) -> MultimodalModel:
    """Load a model onto `device` ("auto": CUDA if there is one): "builtin", a built-in checkpoint folder, or a
    Hugging Face folder / hub id.

    `dtype=None` picks fp32 on CPU and bf16 (fp16 where bf16 is unsupported) on CUDA. `fixed_shape_step` and
    `cuda_graphs`: how the built-in model's continuous-batching step runs (`model.step_graphs.DecodeOptions`;
    None: off); `blank_min_prob`: when the built-in model leaves a transcript blank (`model.checkpoint.load_builtin`).
    Hugging Face models decode their own way and ignore them.
    """
    from model.checkpoint import is_builtin_checkpoint, load_builtin

    if str(path_or_name) == BUILTIN or is_builtin_checkpoint(path_or_name):
        directory = None if str(path_or_name) == BUILTIN else Path(path_or_name)
        return load_builtin(
            directory,
            device,
            dtype,
            fixed_shape_step=fixed_shape_step,
            cuda_graphs=cuda_graphs,
            blank_min_prob=blank_min_prob,
        )
    from model.hf import load_hf_model  # transformers-backed adapters (BLIP, CLIP, ST, VLMs, Whisper)

    return load_hf_model(str(path_or_name), device, dtype)


def load_image_generator(
    path_or_name: str | Path = BUILTIN,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **options: object,
) -> ImageGenerator:
    """Load a text-to-image model onto `device`: "builtin" (`model/weights/generator/`), a folder of the built-in
    generator's format, or a local diffusers Stable Diffusion folder. Raises `ModelLoadError`."""
    from model.image_generator import load_image_generator as load  # diffusers is imported only when needed

    return load(path_or_name, resolve_device(device), dtype, **options)
