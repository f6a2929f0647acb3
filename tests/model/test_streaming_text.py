"""Incremental detokenisation (`StreamingText`) shows exactly what decoding a row's whole id list shows.

The reference is the full-text rule `DecodeState` used before: after every token, decode all the ids (an
answer's only after its last `[SEP]`, nothing before the first) and report what extends the text already
reported. Checked on random id lists over the real vocabulary, and on streamed captions, answers (with
their hidden scratchpads) and transcripts of the tiny and the shipped models, against `greedy_decode`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
from PIL import Image

from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.generate import SequenceSpec, after_scratchpad, greedy_decode
from model.loops import repeats_at_end, until_loop
from model.multimodal import BuiltinModel
from model.scenes import make_scene, render
from model.step_graphs import DecodeOptions
from model.streaming_text import StreamingText
from model.tokenizer import EOS, PAD, SEP
from tests.support.audio import needs_espeak, speech

QUESTIONS = [
    "what colour is the circle?",
    "is the square left of the triangle?",
    "how many shapes are there?",
    "is there a red diamond?",
]
SPOKEN = ["a red circle", "two blue squares and a green triangle", "three"]


def _full_text(detokenize: Callable[[list[int]], str], ids: list[int], sep: int, answer_only: bool) -> str | None:
    """What the row shows after `ids`, decoded whole (the rule before incremental detokenisation)."""
    if not answer_only:
        return detokenize(ids)
    return detokenize(after_scratchpad(ids, sep)) if sep in ids else None


def _full_text_updates(
    detokenize: Callable[[list[int]], str], ids: list[int], limit: int, sep: int, answer_only: bool
) -> list[str]:
    """The deltas a row streams (one per update, the last one's the finish) under the full-text rule."""
    shown, deltas = "", []
    for t in range(1, len(ids) + 1):
        if t == limit:  # the token that reaches the limit finishes the row
            break
        visible = _full_text(detokenize, ids[:t], sep, answer_only)
        if visible is None or not visible.startswith(shown):
            deltas.append("")
            continue
        deltas.append(visible[len(shown) :])
        shown = visible
    text = detokenize(after_scratchpad(ids, sep) if answer_only else ids)
    deltas.append(text[len(shown) :] if text.startswith(shown) else "")
    return deltas


@pytest.fixture(scope="module")
def shipped(text_tower) -> BuiltinModel:  # type: ignore[no-untyped-def]
    return load_builtin(WEIGHTS_DIR, "cpu", text_tower=text_tower)


@pytest.fixture(scope="module")
def tiny(tiny_audio_checkpoint_dir: Path, text_tower) -> BuiltinModel:  # type: ignore[no-untyped-def]
    return load_builtin(tiny_audio_checkpoint_dir, "cpu", text_tower=text_tower)


@pytest.mark.parametrize("answer_only", [False, True])
def test_every_pushed_text_equals_the_whole_lists_decoding(shipped: BuiltinModel, answer_only: bool) -> None:
    """Random ids over the whole vocabulary (special tokens, `##` pieces, punctuation, [SEP]s included)."""
    rng = random.Random(int(answer_only))
    sep = shipped.tokenizer.token_to_id(SEP)
    vocab = shipped.tokenizer.get_vocab_size()
    decode = shipped._decode
    for _ in range(300):
        text = StreamingText(decode, sep, answer_only)
        ids: list[int] = []
        for _ in range(rng.randrange(1, 64)):
            ids.append(sep if rng.random() < 0.05 else rng.randrange(vocab))
            assert text.push(ids) == _full_text(decode, ids, sep, answer_only), ids


def _greedy_ids(model: BuiltinModel, context: Image.Image | np.ndarray, spec: SequenceSpec) -> list[int]:
    """The reference tokens of one row alone: greedy decoding over its image's, or its audio's, tokens."""
    ids = {token: model.tokenizer.token_to_id(token) for token in (EOS, PAD)}
    if isinstance(context, np.ndarray):
        features = model.prepare_audio(context)
        tokens, valid = model.module.encode_audio(features[None], torch.tensor([features.shape[0]]))
    else:
        tokens, valid = model.module.encode_image(model._pixels([context]))[1], None
    [generated] = greedy_decode(
        model.module.decoder, tokens, [list(spec.prompt)], [spec.max_new_tokens], ids[EOS], ids[PAD], context_mask=valid
    )
    return generated


def _streamed(model: BuiltinModel, rows: list[tuple[SequenceSpec, object]], join_every: int) -> list[list[str]]:
    """Each row's update deltas from one `DecodeState`, rows joining `join_every` steps apart."""
    state = model.new_state(len(rows))
    deltas: list[list[str]] = [[] for _ in rows]
    running: list[int] = []
    waiting = list(range(len(rows)))
    step = 0
    with torch.inference_mode():
        while waiting or running:
            if waiting and step % join_every == 0:
                i = waiting.pop(0)
                spec, context = rows[i]
                encode = model.encode_audios if isinstance(context, np.ndarray) else model.encode_images
                prepared = context if isinstance(context, np.ndarray) else model.prepare_image(context)  # type: ignore[arg-type]
                updates = [None] * len(running) + state.prefill([spec], encode([prepared]))  # type: ignore[list-item]
                running.append(i)
            else:
                updates = state.step()  # type: ignore[assignment]
            step += 1
            keep = []
            for r, update in enumerate(updates):
                if update is None:
                    keep.append(r)
                    continue
                deltas[running[r]].append(update.delta)
                if not update.finished:
                    keep.append(r)
            state.filter(keep)
            running = [running[r] for r in keep]
    return deltas


def _check(model: BuiltinModel, rows: list[tuple[SequenceSpec, object]]) -> None:
    sep = model.tokenizer.token_to_id(SEP)
    room = model.config.decoder.max_len
    expected = []
    for spec, context in rows:
        ids = _greedy_ids(model, context, spec)  # type: ignore[arg-type]
        limit = max(0, min(spec.max_new_tokens, room - len(spec.prompt)))
        cut = until_loop(ids, spec.stop_repeats) if spec.stop_repeats else []
        if spec.stop_repeats and cut and repeats_at_end(cut, spec.stop_repeats) and len(cut) < limit:
            ids, limit = cut, len(cut)  # a transcript that loops ends at the token completing its last repeat
        expected.append(_full_text_updates(model._decode, ids, limit, sep, spec.answer_only))
    for join_every in (1, 3):
        assert _streamed(model, rows, join_every) == expected
    assert any("".join(d) for d in expected)  # some rows show text
    assert any(len([x for x in d if x]) > 2 for d in expected)  # and some stream it in several pieces


def _rows(model: BuiltinModel, audios: list[np.ndarray]) -> list[tuple[SequenceSpec, object]]:
    scenes = [render(make_scene(seed)) for seed in range(6)]
    captions = [(model.sequence("caption", None, n), scene) for n, scene in zip([32, 5, 40], scenes, strict=False)]
    answers = [(model.sequence("vqa", q, 16), scene) for q, scene in zip(QUESTIONS, scenes[2:], strict=True)]
    spoken = [(model.sequence("transcribe", None, model.config.decoder.max_len - 1), audio) for audio in audios]
    return [row for trio in zip(captions, answers, spoken, strict=False) for row in trio] + answers[3:]


@pytest.fixture(scope="module")
def audios() -> list[np.ndarray]:
    return [soxr.resample(*speech(s), 16_000).astype(np.float32) for s in SPOKEN]


STEP_SHAPES = {"dynamic": DecodeOptions(), "fixed": DecodeOptions(fixed_shapes=True)}


@needs_espeak
@pytest.mark.parametrize("shapes", sorted(STEP_SHAPES))
def test_streams_of_the_tiny_model_equal_full_text_detokenisation(
    tiny: BuiltinModel, audios: list[np.ndarray], shapes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny random model writes odd token sequences: `##` pieces after [SEP], punctuation, special tokens.
    With a step of fixed shapes per bucket too (rows of every kind in one state)."""
    monkeypatch.setattr(tiny, "decode_options", STEP_SHAPES[shapes])
    _check(tiny, _rows(tiny, audios))


@needs_espeak
@pytest.mark.parametrize("shapes", sorted(STEP_SHAPES))
def test_streams_of_the_shipped_model_equal_full_text_detokenisation(
    shipped: BuiltinModel, audios: list[np.ndarray], shapes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real captions, answers after their scratchpads, and transcripts (with fixed shapes too)."""
    monkeypatch.setattr(shipped, "decode_options", STEP_SHAPES[shapes])
    _check(shipped, _rows(shipped, audios))
