"""The CLIP-style dual-encoder adapter against transformers' CLIPModel and SiglipModel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, CLIPModel, SiglipModel

from model.api import MultimodalModel, UnsupportedTask
from model.hf import load_hf_model
from tests.support.hf_checkpoints import build_clip, build_siglip, sample_images

IMAGES = sample_images(5)
TEXTS = [
    "a cat",
    "a large brown dog running on the beach at sunset",
    "two",
    "a red car",
    "a photo of nothing",
]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> MultimodalModel:
    return load_hf_model(str(clip_dir))


@pytest.fixture(scope="module")
def reference(clip_dir: Path) -> tuple[CLIPModel, AutoProcessor]:
    return CLIPModel.from_pretrained(clip_dir).eval(), AutoProcessor.from_pretrained(clip_dir)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def test_contract(clip: MultimodalModel) -> None:
    assert isinstance(clip, MultimodalModel)
    assert clip.tasks == frozenset({"embed_text", "embed_image"})
    assert clip.dim == 16 and clip.max_text_tokens == 64
    assert clip.embed_text([]).shape == (0, 16) and clip.embed_image([]).shape == (0, 16)
    with pytest.raises(UnsupportedTask):
        clip.caption(IMAGES[:1])
    with pytest.raises(UnsupportedTask):
        clip.answer(IMAGES[:1], ["?"])


@torch.inference_mode()
def test_text_embeddings_equal_transformers(clip: MultimodalModel, reference) -> None:
    model, processor = reference
    ours = torch.cat([clip.embed_text([text]) for text in TEXTS])
    tokens = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    theirs = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).pooler_output
    assert ours.dtype == torch.float32 and ours.device.type == "cpu" and ours.shape == (5, 16)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert cosines(ours, theirs).min() >= 0.9999
    assert cosines(ours[0], ours[1]) < 0.999, "embeddings should depend on the text"


@torch.inference_mode()
def test_image_embeddings_equal_transformers(clip: MultimodalModel, reference) -> None:
    model, processor = reference
    ours = torch.cat([clip.embed_image([image]) for image in IMAGES])
    theirs = model.get_image_features(**processor(images=IMAGES, return_tensors="pt")).pooler_output
    assert cosines(ours, theirs).min() >= 0.9999
    assert cosines(ours[0], ours[2]) < 0.999, "embeddings should depend on the image"


def test_batches_equal_single_calls(clip: MultimodalModel) -> None:
    text_batch, image_batch = clip.embed_text(TEXTS), clip.embed_image(IMAGES)
    assert cosines(text_batch, torch.cat([clip.embed_text([t]) for t in TEXTS])).min() >= 0.9999
    assert cosines(image_batch, torch.cat([clip.embed_image([i]) for i in IMAGES])).min() >= 0.9999


def test_long_text_is_truncated_not_an_error(clip: MultimodalModel) -> None:
    long_text = "word " * 500
    assert clip.embed_text([long_text]).shape == (1, 16)
    assert cosines(clip.embed_text([long_text]), clip.embed_text(["word " * 200])).item() >= 0.9999


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_siglip(tmp_path_factory.mktemp("siglip"))


@torch.inference_mode()
def test_siglip_pads_texts_to_fixed_length_like_transformers(siglip_dir: Path) -> None:
    siglip = load_hf_model(str(siglip_dir))
    assert siglip.tasks == frozenset({"embed_text", "embed_image"}) and siglip.max_text_tokens == 16
    model, processor = (
        SiglipModel.from_pretrained(siglip_dir).eval(),
        AutoProcessor.from_pretrained(siglip_dir),
    )
    tokens = processor.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    theirs = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    ours = torch.cat([siglip.embed_text([text]) for text in TEXTS])
    assert cosines(ours, theirs.pooler_output).min() >= 0.9999
    assert cosines(siglip.embed_text(TEXTS), ours).min() >= 0.9999
    images = model.get_image_features(**processor(images=IMAGES, return_tensors="pt")).pooler_output
    assert cosines(siglip.embed_image(IMAGES), images).min() >= 0.9999
    assert cosines(ours[0], ours[1]) < 0.999 and cosines(images[0], images[2]) < 0.999
