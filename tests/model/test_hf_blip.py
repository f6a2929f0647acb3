"""BLIP adapters against transformers itself: captions (with and without a prompt) and VQA answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, BlipForConditionalGeneration, BlipForQuestionAnswering

from model.api import MultimodalModel, UnsupportedTask
from model.hf import load_hf_model
from tests.support.hf_checkpoints import build_blip_captioning, build_blip_vqa, sample_images

IMAGES = sample_images(5)
QUESTIONS = [
    "what is this?",
    "what colour is the large dog on the left of the picture?",
    "how many?",
    "is it raining?",
    "where was this photo taken, and by whom?",
]


@pytest.fixture(scope="session")
def captioning_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blip_captioning(tmp_path_factory.mktemp("blip-captioning"))


@pytest.fixture(scope="session")
def vqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blip_vqa(tmp_path_factory.mktemp("blip-vqa"))


@pytest.fixture(scope="module")
def captioner(captioning_dir: Path) -> MultimodalModel:
    return load_hf_model(str(captioning_dir))


@pytest.fixture(scope="module")
def answerer(vqa_dir: Path) -> MultimodalModel:
    return load_hf_model(str(vqa_dir))


@pytest.fixture(scope="module")
def reference_caption(captioning_dir: Path):
    """transformers' own BLIP captioning of one image."""
    processor = AutoProcessor.from_pretrained(captioning_dir)
    model = BlipForConditionalGeneration.from_pretrained(captioning_dir).eval()

    @torch.inference_mode()
    def caption(image, max_new_tokens: int, prompt: str | None = None) -> str:
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.decode(out[0], skip_special_tokens=True).strip()

    return caption


@pytest.fixture(scope="module")
def reference_answer(vqa_dir: Path):
    """transformers' own BLIP answer for one (image, question)."""
    processor = AutoProcessor.from_pretrained(vqa_dir)
    model = BlipForQuestionAnswering.from_pretrained(vqa_dir).eval()

    @torch.inference_mode()
    def answer(image, question: str, max_new_tokens: int) -> str:
        inputs = processor(images=image, text=question, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.decode(out[0], skip_special_tokens=True).strip()

    return answer


def test_captioner_contract(captioner: MultimodalModel) -> None:
    assert isinstance(captioner, MultimodalModel)
    assert captioner.tasks == frozenset({"caption"})
    assert captioner.dim is None and captioner.dtype == torch.float32 and captioner.device.type == "cpu"
    assert captioner.caption([]) == []
    for refused in (
        lambda: captioner.answer(IMAGES[:1], ["?"]),
        lambda: captioner.embed_text(["a"]),
        lambda: captioner.embed_image(IMAGES[:1]),
    ):
        with pytest.raises(UnsupportedTask):
            refused()


def test_caption_equals_transformers(captioner: MultimodalModel, reference_caption) -> None:
    ours = [captioner.caption([image], 8)[0] for image in IMAGES[:3]]
    assert ours == [reference_caption(image, 8) for image in IMAGES[:3]]
    assert len(set(ours)) == len(ours), "a tiny model whose caption ignores the image proves nothing"


def test_caption_batch_equals_single_calls_with_per_image_limits(captioner: MultimodalModel) -> None:
    limits = [1, 6, 3, 9, 0]
    batch = captioner.caption(IMAGES, limits)
    assert batch == [captioner.caption([image], limit)[0] for image, limit in zip(IMAGES, limits, strict=True)]
    assert batch[-1] == ""
    assert [len(c.split()) > 0 for c in batch[:4]] == [True] * 4


def test_caption_prompt_is_continued(captioning_dir: Path, reference_caption) -> None:
    prompted = load_hf_model(str(captioning_dir), caption_prompt="a picture of")
    captions = prompted.caption(IMAGES[:3], [4, 2, 6])
    assert all(caption.startswith("a picture of") for caption in captions)
    assert captions == [prompted.caption([image], n)[0] for image, n in zip(IMAGES[:3], [4, 2, 6], strict=True)]
    assert captions[0] == reference_caption(IMAGES[0], 4, prompt="a picture of")


def test_answerer_contract(answerer: MultimodalModel) -> None:
    assert answerer.tasks == frozenset({"vqa"})
    assert answerer.answer([], []) == []
    with pytest.raises(UnsupportedTask):
        answerer.caption(IMAGES[:1])
    with pytest.raises(ValueError, match="questions"):
        answerer.answer(IMAGES[:2], QUESTIONS[:1])


def test_answer_equals_transformers(answerer: MultimodalModel, reference_answer) -> None:
    pairs = list(zip(IMAGES[:3], QUESTIONS[:3], strict=True))
    ours = [answerer.answer([image], [question], 6)[0] for image, question in pairs]
    assert ours == [reference_answer(image, question, 6) for image, question in pairs]
    assert len(set(ours)) > 1


def test_answer_batch_of_mixed_questions_equals_single_calls(answerer: MultimodalModel) -> None:
    # mixed lengths, and three questions of one length ("is it raining?", "is it sunny?", "who is it?")
    images, questions = IMAGES + IMAGES[:2], [*QUESTIONS, "is it sunny?", "who is it?"]
    batch = answerer.answer(images, questions, 5)
    assert batch == [answerer.answer([image], [q], 5)[0] for image, q in zip(images, questions, strict=True)]
    same_image = answerer.answer([IMAGES[0]] * 3, QUESTIONS[:3], 5)
    assert len(set(same_image)) > 1, "answers should depend on the question"


def test_generation_reports_every_decoding_step(captioner: MultimodalModel, answerer: MultimodalModel) -> None:
    """`progress` is called once per generated token of the batch (the longest row's), outputs unchanged."""
    steps: list[int] = []
    limits = [3, 9, 5]
    captions = captioner.caption(IMAGES[:3], limits, progress=lambda: steps.append(1))
    assert captions == captioner.caption(IMAGES[:3], limits)
    assert len(steps) == 9  # the tiny model never ends a caption this early (its outputs are below)
    assert all(len(c.split()) >= 1 for c in captions)
    steps.clear()
    answers = answerer.answer(IMAGES[:2], QUESTIONS[:2], 4, progress=lambda: steps.append(1))
    assert answers == answerer.answer(IMAGES[:2], QUESTIONS[:2], 4)
    assert 2 <= len(steps) <= 2 * 4  # two question lengths: two generations of at most 4 steps each
