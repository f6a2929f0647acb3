"""The built-in model on CUDA: continuous batching equals greedy decoding alone, heard questions are rescored as on
the CPU, and training runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import load_model
from model.generate import greedy_decode
from model.scenes import make_scene, render

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_continuous_batching_equals_greedy_alone_on_cuda() -> None:
    model = load_model("builtin", "cuda", torch.float32)
    images = [render(make_scene(10_000_000 + i)) for i in range(12)]
    limits = [3 + 5 * i for i in range(12)]
    batched = model.caption(images, limits)
    alone = []
    for image, limit in zip(images, limits, strict=True):
        [prepared] = model._prepared([image])
        _, tokens = model.module.encode_image(model._pixels([prepared]))
        [ids] = greedy_decode(model.module.decoder, tokens, [[model._ids["[BOS]"]]], [limit], model._ids["[EOS]"], 0)
        alone.append(model._decode(ids))
    assert batched == alone
    assert sum(bool(text) for text in batched) >= 10


def test_a_few_training_steps_on_cuda(tmp_path: Path) -> None:
    """`mmserve train` for a few steps on the GPU (it once crashed at step 0 on CUDA)."""
    command = [sys.executable, "-m", "model.train", "--stage", "base", "--steps", "5", "--eval-every", "1000"]
    command += ["--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_heard_questions_are_rescored_on_cuda_as_on_the_cpu() -> None:
    """The shipped CTC head rescoring spoken questions (`model.heard_rescoring`) on CUDA chooses what it chooses
    on the CPU (fp32), for the spoken `/vqa` evaluation's first twelve clips."""
    from model.spoken_vqa_eval import spoken_questions

    asked = spoken_questions(12)
    heard = load_model("builtin", "cpu", torch.float32).transcribe(asked.clips)  # the same texts on both
    chosen = {}
    for device in ("cpu", "cuda"):
        model = load_model("builtin", device, torch.float32)
        chosen[device] = model.rescore_heard(model.encode_audios(asked.clips), heard)
    assert chosen["cuda"] == chosen["cpu"]
    assert sum(bool(text) for text in chosen["cpu"]) >= 10
