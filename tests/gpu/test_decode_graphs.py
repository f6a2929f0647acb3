"""The built-in model's decoding step as CUDA graphs: token for token what eager decoding gives.

Captions, answers and transcripts of the shipped model decode in one state, rows joining at several steps
and one leaving mid-way (so the step runs several buckets, and the context slots grow for the audio, which
makes the graphs be captured again): with CUDA graphs (the default on CUDA), with the same fixed-shape step
run eagerly, and with the step whose shapes change every step. Timings are in bench/decode_step.py
(bench/gpu_check.sh prints the speed-up), not here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import soxr
import torch

from model import load_model
from model.generate import generate_all, greedy_decode
from model.multimodal import BuiltinModel
from model.scenes import make_scene, render
from model.step_graphs import DecodeOptions
from tests.support.audio import speech

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUESTIONS = ["what colour is the circle?", "how many shapes are there?", "is the square left of the triangle?"]
SPOKEN = ["a red circle", "two blue squares and a green triangle", "three"]
JOINS = {0: range(0, 6), 2: range(6, 9), 5: range(9, 12), 9: range(12, 15)}  # step → rows that join before it
LEAVES = {4: 1}  # step → the sequence whose client leaves before it


def _rows(model: BuiltinModel) -> list[tuple[Any, Any]]:
    """(spec, encoding) of 9 captions of mixed lengths, 3 answers and 3 transcripts."""
    images = [model.prepare_image(render(make_scene(20_000 + i))) for i in range(12)]
    encodings = model.encode_images(images)
    audios = [soxr.resample(*speech(text), 16_000).astype(np.float32) for text in SPOKEN]
    heard = model.encode_audios(audios)
    rows = [(model.sequence("caption", None, 4 + 6 * i), encodings[i]) for i in range(9)]
    rows += [(model.sequence("vqa", q, 16), encodings[9 + i]) for i, q in enumerate(QUESTIONS)]
    for audio, encoding in zip(audios, heard, strict=True):
        rows.append((model.sequence("transcribe", None, model.transcript_tokens(audio)), encoding))
    return rows


def _decode(model: BuiltinModel, options: DecodeOptions, rows: list[tuple[Any, Any]]) -> tuple[dict[int, str], Any]:
    """Every finished sequence's text (and its streamed deltas, joined), by sequence; and the state."""
    model.decode_options = options
    state = model.new_state(len(rows))
    running: list[int] = []
    texts: dict[int, str] = {}
    shown = {i: "" for i in range(len(rows))}
    step = 0
    with torch.inference_mode():
        while running or step <= max(JOINS):
            if step in LEAVES and LEAVES[step] in running:
                gone = running.index(LEAVES[step])
                state.filter([r for r in range(len(running)) if r != gone])
                running.pop(gone)
            updates = state.step() if running else []
            if step in JOINS:
                joining = list(JOINS[step])
                updates += state.prefill([rows[i][0] for i in joining], [rows[i][1] for i in joining])
                running += joining
            step += 1
            keep = []
            for r, update in enumerate(updates):
                shown[running[r]] += update.delta
                if update.finished:
                    texts[running[r]] = update.text or ""
                else:
                    keep.append(r)
            state.filter(keep)
            running = [running[r] for r in keep]
    assert all(shown[i] == text for i, text in texts.items())
    return texts, state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_steps_equal_eager_steps_token_for_token(dtype: torch.dtype) -> None:
    model = load_model("builtin", "cuda", dtype)
    assert isinstance(model, BuiltinModel)
    assert model.decode_options == DecodeOptions(fixed_shapes=True, cuda_graphs=True)  # the default on CUDA
    rows = _rows(model)
    graphs, state = _decode(model, DecodeOptions(fixed_shapes=True, cuda_graphs=True), rows)
    assert not state.graphs.failed and len(state.graphs.captured) >= 2  # replayed, several buckets
    eager, _ = _decode(model, DecodeOptions(fixed_shapes=True), rows)
    assert graphs == eager  # the same kernels, replayed: bit for bit
    assert len(graphs) == len(rows) - 1 and sum(bool(text) for text in graphs.values()) >= 8
    if dtype == torch.float32:  # (in bf16 other shapes may round a near tie the other way)
        dynamic, _ = _decode(model, DecodeOptions(), rows)
        assert graphs == dynamic


def test_cuda_graph_captions_equal_greedy_decoding_alone() -> None:
    """Captions decoded together in a serving state (graphs on: the default on CUDA) equal each image's greedy
    decoding alone; a whole-batch call (`caption`) decodes eagerly, the same."""
    model = load_model("builtin", "cuda", torch.float32)
    assert isinstance(model, BuiltinModel)
    images = [render(make_scene(30_000 + i)) for i in range(11)]
    limits = [2 + 5 * i for i in range(11)]
    state = model.new_state(len(images))
    specs = [model.sequence("caption", None, n) for n in limits]
    batched = generate_all(state, specs, model.encode_images([model.prepare_image(image) for image in images]))
    assert state.graphs is not None and not state.graphs.failed and state.graphs.captured
    assert model.new_state(1, once=True).graphs is None
    assert model.caption(images, limits) == batched
    ids = model._ids
    alone = []
    for image, limit in zip(images, limits, strict=True):
        _, tokens = model.module.encode_image(model._pixels([model.prepare_image(image)]))
        [generated] = greedy_decode(model.module.decoder, tokens, [[ids["[BOS]"]]], [limit], ids["[EOS]"], ids["[PAD]"])
        alone.append(model._decode(generated))
    assert batched == alone
