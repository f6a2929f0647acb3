"""The shipped generator served as the step loop serves it (`load_image_generator`, `DenoiseState`) equals the
reference sampling loop it was trained and evaluated with (`model.text_to_image.TextToImage`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.image_generator import load_image_generator
from model.text_to_image import GENERATOR_DIR, TextToImage

pytestmark = pytest.mark.skipif(not (GENERATOR_DIR / "model_index.json").is_file(), reason="no shipped generator")


def test_the_served_generator_equals_its_reference_loop_alone_and_batched() -> None:
    reference = TextToImage.from_pretrained()
    served = load_image_generator("builtin", torch.device("cpu"), torch.float32)
    prompts = ["a large red circle", "a small blue square and a large green triangle", "a purple diamond"]
    expected = [np.asarray(reference.generate([p], [seed])[0], dtype=int) for seed, p in enumerate(prompts, 1)]
    specs = [served.image_spec(p, seed) for seed, p in enumerate(prompts, 1)]  # the folder's defaults
    alone = [np.asarray(served.generate([spec])[0], dtype=int) for spec in specs]
    batched = [np.asarray(image, dtype=int) for image in served.generate(specs)]
    for want, one, many in zip(expected, alone, batched, strict=True):
        assert np.abs(want - one).max() <= 1
        assert np.abs(want - many).max() <= 1
    assert np.abs(expected[0] - expected[2]).max() > 16  # different prompts, different images
