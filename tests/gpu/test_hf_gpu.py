"""The Hugging Face adapters on CUDA: bf16 by default, SDPA where the architecture has it, CPU float32 out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.hf import load_hf_model
from tests.support.hf_checkpoints import BUILDERS, build_all, sample_images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

IMAGES = sample_images(4)
QUESTIONS = ["what is this?", "what colour is the large dog on the left?", "how many?", "why?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny-hf"))


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_defaults_to_bf16_on_cuda_and_serves_every_task(folders: dict[str, Path], family: str) -> None:
    model = load_hf_model(str(folders[family]), "cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert model.device.type == "cuda" and model.dtype == expected
    assert next(model.model.parameters()).dtype == expected  # type: ignore[attr-defined]
    if "caption" in model.tasks:
        assert len(model.caption(IMAGES, [3, 1, 4, 2])) == 4
    if "vqa" in model.tasks:
        assert len(model.answer(IMAGES, QUESTIONS, 3)) == 4
    if "embed_text" in model.tasks:
        on_gpu = model.embed_text(QUESTIONS)
        assert on_gpu.dtype == torch.float32 and on_gpu.device.type == "cpu"
        on_cpu = load_hf_model(str(folders[family]), "cpu").embed_text(QUESTIONS)
        assert F.cosine_similarity(on_gpu, on_cpu).min() >= 0.99  # bf16 vs fp32
    if "embed_image" in model.tasks:
        assert model.embed_image(IMAGES).shape == (4, model.dim)


@pytest.mark.parametrize("family", ["clip", "siglip", "llava", "sentence-transformer"])
def test_sdpa_attention_where_available(folders: dict[str, Path], family: str) -> None:
    model = load_hf_model(str(folders[family]), "cuda")
    assert model.model.config._attn_implementation == "sdpa"  # type: ignore[attr-defined]
