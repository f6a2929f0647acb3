"""The built-in model's public API on a tiny random checkpoint: shapes, batching, hostile inputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model import UnsupportedTask, load_model
from model.api import UNDERSTANDING_TASKS
from model.scenes import make_scene, render


def _scenes(n: int) -> list[Image.Image]:
    return [render(make_scene(100 + i)) for i in range(n)]


def test_protocol_attributes(tiny_model) -> None:
    assert tiny_model.tasks == UNDERSTANDING_TASKS - {"transcribe"}  # `tiny` has no audio tower (test_audio.py)
    assert tiny_model.audio is None
    with pytest.raises(UnsupportedTask, match="MMSERVE_TRANSCRIBE_MODEL"):
        tiny_model.transcribe([np.zeros(16_000, dtype=np.float32)])
    assert tiny_model.dim == 384
    assert tiny_model.device == torch.device("cpu")
    assert tiny_model.dtype == torch.float32
    assert tiny_model.name == "mmserve-tiny-random"


def test_load_model_dispatches_builtin_folders(tiny_checkpoint_dir) -> None:
    model = load_model(str(tiny_checkpoint_dir), "cpu")
    assert model.name == "mmserve-tiny-random"


def test_batched_equals_single(tiny_model) -> None:
    images = _scenes(5)
    questions = ["how many shapes are there?", "what colour is the circle?", "", "is there a red square?", "hm"]
    limits = [3, 12, 7, 1, 20]
    singles = [tiny_model.caption([im], n)[0] for im, n in zip(images, limits, strict=True)]
    assert tiny_model.caption(images, limits) == singles
    assert tiny_model.answer(images, questions) == [
        tiny_model.answer([im], [q])[0] for im, q in zip(images, questions, strict=True)
    ]
    batched = tiny_model.embed_image(images)
    single = torch.cat([tiny_model.embed_image([im]) for im in images])
    assert torch.allclose(batched, single, atol=1e-5)
    texts = ["a", "a much longer sentence about shapes", ""]
    assert torch.allclose(
        tiny_model.embed_text(texts), torch.cat([tiny_model.embed_text([t]) for t in texts]), atol=1e-5
    )


def test_whole_batches_report_every_decoding_step(tiny_model) -> None:
    """The first token comes from the prefill; every later one from a step, and each step is reported."""
    steps: list[int] = []
    images, limits = _scenes(3), [2, 6, 4]
    captions = tiny_model.caption(images, limits, progress=lambda: steps.append(1))
    assert captions == tiny_model.caption(images, limits)
    assert 1 <= len(steps) <= max(limits) - 1


def test_outputs_depend_on_the_input(tiny_model) -> None:
    images = _scenes(6)
    assert len(set(tiny_model.caption(images, 8))) > 1
    assert len(set(tiny_model.answer([images[0]] * 4, ["how many", "what colour", "is there", "xyz"]))) > 1


def test_embeddings_are_normalised(tiny_model) -> None:
    for emb in (tiny_model.embed_image(_scenes(3)), tiny_model.embed_text(["red", "blue circle"])):
        assert emb.dtype == torch.float32 and emb.device.type == "cpu"
        assert torch.allclose(emb.norm(dim=-1), torch.ones(emb.shape[0]), atol=1e-5)


def test_empty_lists(tiny_model) -> None:
    assert tiny_model.caption([]) == []
    assert tiny_model.answer([], []) == []
    assert tiny_model.embed_text([]).shape == (0, 384)
    assert tiny_model.embed_image([]).shape == (0, 384)


def _png(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I", "F", "I;16", "YCbCr", "HSV"])
def test_any_pil_mode(tiny_model, mode: str) -> None:
    image = render(make_scene(5))
    converted = (
        image.convert("RGBA" if mode == "RGBA" else mode)
        if mode not in ("I;16", "HSV")
        else (image.convert("L").convert("I;16") if mode == "I;16" else image.convert("HSV"))
    )
    assert len(tiny_model.caption([converted], 4)) == 1
    assert tiny_model.embed_image([converted]).shape == (1, 384)


def test_transparency_is_flattened_onto_white(tiny_model) -> None:
    transparent = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    assert torch.allclose(tiny_model.embed_image([transparent]), tiny_model.embed_image([white]), atol=1e-6)
    palette = _png(Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert("P"))
    assert len(tiny_model.caption([palette], 2)) == 1


@pytest.mark.parametrize("size", [(1, 1), (3, 500), (640, 480), (64, 64)])
def test_any_size(tiny_model, size: tuple[int, int]) -> None:
    image = render(make_scene(9)).resize(size)
    assert len(tiny_model.answer([image], ["how many shapes are there?"])) == 1


def test_hostile_text_never_raises(tiny_model) -> None:
    weird = ["", " ", "漢字とかな", "😀" * 50, "\x00\x01\u202e", "how " * 2000, "WHAT COLOUR IS THE CIRCLE???"]
    assert len(tiny_model.answer(_scenes(1) * len(weird), weird)) == len(weird)
    assert tiny_model.embed_text(weird).shape == (len(weird), 384)


def test_long_texts_are_truncated_not_refused(tiny_model) -> None:
    # MiniLM sees the first 256 tokens: a text and the same text with more words after them agree
    base = "word " * 300
    a, b = tiny_model.embed_text([base, base + "entirely different ending"])
    assert torch.allclose(a, b, atol=1e-6)
    assert tiny_model.max_text_tokens == 256


def test_mismatched_answer_inputs(tiny_model) -> None:
    with pytest.raises(ValueError, match="2 images but 1 questions"):
        tiny_model.answer(_scenes(2), ["one question"])


def test_answers_drop_the_scratchpad() -> None:
    from model.streaming_text import after_scratchpad

    sep = 4
    assert after_scratchpad([20, 21, sep, 30], sep) == [30]  # "two four [SEP] yes" → "yes"
    assert after_scratchpad([30], sep) == [30]  # no scratchpad
    assert after_scratchpad([20, sep, 21, sep], sep) == []  # the last [SEP] counts
