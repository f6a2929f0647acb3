"""The image-text-to-text adapter (a tiny LLaVA with a chat template) against transformers itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from model.api import MultimodalModel, UnsupportedTask
from model.hf import load_hf_model
from model.hf.vlm import DEFAULT_CAPTION_INSTRUCTION
from tests.support.hf_checkpoints import build_llava, sample_images

IMAGES = sample_images(5)
QUESTIONS = [
    "what is this?",
    "what colour is the large dog on the left of the picture, and why is it sitting there?",
    "how many?",
    "is it raining?",
    "where was this photo taken?",
]


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def vlm(llava_dir: Path) -> MultimodalModel:
    return load_hf_model(str(llava_dir))


@pytest.fixture(scope="module")
def reference(llava_dir: Path):
    """transformers' own greedy generation for one (image, text) user turn."""
    processor = AutoProcessor.from_pretrained(llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()

    @torch.inference_mode()
    def generate(image, text: str, max_new_tokens: int) -> str:
        conversation = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}
        ]
        inputs = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    return generate


def test_contract(vlm: MultimodalModel) -> None:
    assert isinstance(vlm, MultimodalModel)
    assert vlm.tasks == frozenset({"caption", "vqa"})
    assert vlm.dim is None and vlm.caption([]) == [] and vlm.answer([], []) == []
    with pytest.raises(UnsupportedTask):
        vlm.embed_text(["a"])
    with pytest.raises(UnsupportedTask):
        vlm.embed_image(IMAGES[:1])


def test_caption_equals_transformers_with_the_instruction(vlm: MultimodalModel, reference) -> None:
    ours = [vlm.caption([image], 6)[0] for image in IMAGES[:3]]
    assert ours == [reference(image, DEFAULT_CAPTION_INSTRUCTION, 6) for image in IMAGES[:3]]
    assert len(set(ours)) == 3, "captions should depend on the image"


def test_caption_instruction_is_configurable(llava_dir: Path, reference) -> None:
    terse = load_hf_model(str(llava_dir), caption_prompt="Name the main object.")
    assert terse.caption(IMAGES[:1], 5) == [reference(IMAGES[0], "Name the main object.", 5)]


def test_answer_equals_transformers(vlm: MultimodalModel, reference) -> None:
    pairs = list(zip(IMAGES[:3], QUESTIONS[:3], strict=True))
    assert [vlm.answer([i], [q], 6)[0] for i, q in pairs] == [reference(i, q, 6) for i, q in pairs]


def test_batches_of_mixed_lengths_equal_single_calls(vlm: MultimodalModel) -> None:
    # questions of different token lengths: the batch is left-padded
    answers = vlm.answer(IMAGES, QUESTIONS, 6)
    assert answers == [vlm.answer([i], [q], 6)[0] for i, q in zip(IMAGES, QUESTIONS, strict=True)]
    assert len(set(vlm.answer([IMAGES[0]] * 3, QUESTIONS[:3], 6))) > 1, "answers should depend on the question"
    limits = [2, 7, 0, 4, 1]
    captions = vlm.caption(IMAGES, limits)
    assert captions == [vlm.caption([i], n)[0] for i, n in zip(IMAGES, limits, strict=True)]
    assert captions[2] == ""


def test_control_tokens_in_a_question_do_not_fail_the_batch(vlm: MultimodalModel) -> None:
    tricky = "what is <image> this? <image>"
    answers = vlm.answer(IMAGES[:2], [tricky, QUESTIONS[0]], 4)
    assert answers[1] == vlm.answer(IMAGES[1:2], QUESTIONS[:1], 4)[0]
    assert answers[0] == vlm.answer(IMAGES[:1], ["what is   this?  "], 4)[0]


def test_long_questions_are_cut_to_max_text_tokens(llava_dir: Path) -> None:
    short = load_hf_model(str(llava_dir), max_text_tokens=3)
    assert short.max_text_tokens == 3
    long_question = "what colour is the large dog on the left?"
    assert short.answer(IMAGES[:1], [long_question], 4) == short.answer(IMAGES[:1], ["what colour is"], 4)


def test_prepared_images_give_the_same_answers(vlm: MultimodalModel) -> None:
    """`prepare_image` resizes and crops as the processor would (model-sized, in the decode pool); the
    processor's own resize and crop then change nothing: the same answers and captions as from the raw images."""
    prepared = [vlm.prepare_image(image) for image in IMAGES]
    assert vlm.input_size is not None
    assert all(image.size == vlm.input_size for image in prepared)  # shortest edge, then a square crop
    assert vlm.answer(prepared, QUESTIONS, 6) == vlm.answer(IMAGES, QUESTIONS, 6)
    assert vlm.caption(prepared, 5) == vlm.caption(IMAGES, 5)
    processor = vlm.processor.image_processor  # type: ignore[attr-defined]
    assert torch.equal(
        processor(images=prepared, return_tensors="pt")["pixel_values"],
        processor(images=IMAGES, return_tensors="pt")["pixel_values"],
    )
