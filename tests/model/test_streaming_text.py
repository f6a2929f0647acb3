"""What a row's stream is told (`StreamingText`) adds up to its final text, and shows no hidden scratchpad.

A caption's or a transcript's text streams as it decodes, a few tokens at a time (`IncrementalText`), and
equals decoding the whole id list after every token; an answer's text (what follows the last `[SEP]`) is told
at the end only, since another `[SEP]` may still come. A Hypothesis property checks both rules on id lists
over the real vocabulary with no, one, two and more `[SEP]`s; and streamed captions, answers (the shipped
model's scratchpads) and transcripts of the tiny and the shipped models stream what
the rule says, against `greedy_decode`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.generate import SequenceSpec, greedy_decode
from model.loops import repeats_at_end, until_loop
from model.multimodal import BuiltinModel
from model.scenes import make_scene, render
from model.step_graphs import DecodeOptions
from model.streaming_text import IncrementalText, StreamingText, after_scratchpad
from model.tokenizer import EOS, PAD, SEP, load_tokenizer
from tests.support.audio import needs_espeak, speech

QUESTIONS = [
    "what colour is the circle?",
    "is the square left of the triangle?",
    "how many shapes are there?",
    "is there a red diamond?",
]
SPOKEN = ["a red circle", "two blue squares and a green triangle", "three"]
# A question about objects scene 1 lacks. The weights shipped before the hearing stage's flite leg wrote its
# scratchpad twice here, "zero left [SEP] zero right [SEP] yes" (a stream used to show "zero right", and then
# nothing of the answer "yes"); today's write it once ("zero left [SEP] no"). Two [SEP]s stay covered by the
# Hypothesis property below and by tests/model/test_continuous.py's scripted rows.
TWICE = (1, "is the circle right of the square?")

TOKENIZER = load_tokenizer(WEIGHTS_DIR / "tokenizer.json")
SEP_ID = TOKENIZER.token_to_id(SEP)


def decode(ids: list[int]) -> str:
    """The shipped model's detokenisation (`BuiltinModel._decode`: the tokenizer's, stripped)."""
    return TOKENIZER.decode(ids).strip()


def final_text(detokenize: Callable[[list[int]], str], ids: list[int], sep: int, spec: SequenceSpec) -> str:
    """A finished row's text, decoded whole: an answer's is what follows its last [SEP]."""
    return detokenize(after_scratchpad(ids, sep, spec.scratchpad) if spec.answer_only else ids)


def expected_updates(
    detokenize: Callable[[list[int]], str], ids: list[int], limit: int, sep: int, spec: SequenceSpec
) -> list[str]:
    """The deltas a row streams (one per update, the last one's the finish): a caption's text decoded whole
    after every token, an answer's at the end."""
    shown, deltas = "", []
    for t in range(1, len(ids) + 1):
        if t == limit:  # the token that reaches the limit finishes the row
            break
        visible = "" if spec.answer_only else detokenize(ids[:t])
        assert visible.startswith(shown)
        deltas.append(visible[len(shown) :])
        shown = visible
    text = final_text(detokenize, ids, sep, spec)
    assert text.startswith(shown)
    deltas.append(text[len(shown) :])
    return deltas


@pytest.fixture(scope="module")
def shipped(text_tower) -> BuiltinModel:  # type: ignore[no-untyped-def]
    return load_builtin(WEIGHTS_DIR, "cpu", text_tower=text_tower)


@pytest.fixture(scope="module")
def tiny(tiny_audio_checkpoint_dir: Path, text_tower) -> BuiltinModel:  # type: ignore[no-untyped-def]
    return load_builtin(tiny_audio_checkpoint_dir, "cpu", text_tower=text_tower)


def test_incremental_text_equals_the_whole_lists_decoding() -> None:
    """Random ids over the whole vocabulary (special tokens, `##` pieces, punctuation, [SEP]s included)."""
    rng = random.Random(0)
    vocab = TOKENIZER.get_vocab_size()
    for _ in range(300):
        text = IncrementalText(decode)
        ids: list[int] = []
        for _ in range(rng.randrange(1, 64)):
            ids.append(SEP_ID if rng.random() < 0.05 else rng.randrange(vocab))
            assert text.push(ids) == decode(ids), ids


# Id lists with 0, 1, 2 or more [SEP]s: runs of other tokens (the whole vocabulary: special tokens, `##`
# pieces, punctuation) joined by [SEP]s, which may also open or close the list.
_OTHER = st.integers(0, TOKENIZER.get_vocab_size() - 1).filter(lambda i: i != SEP_ID)
_IDS = st.lists(st.lists(_OTHER, max_size=6), min_size=1, max_size=5).map(
    lambda runs: [i for n, run in enumerate(runs) for i in ([SEP_ID] if n else []) + run]
)


@settings(max_examples=400, deadline=None)
@given(ids=_IDS, answer_only=st.booleans(), scratchpad=st.booleans(), last_pushed=st.booleans())
def test_streamed_pieces_add_up_to_the_final_text_and_never_show_a_scratchpad(
    ids: list[int], answer_only: bool, scratchpad: bool, last_pushed: bool
) -> None:
    """`last_pushed`: the row ends after its last id was pushed (end of sequence), or with it unpushed (its
    limit, a loop). An answer tells nothing before its end, then exactly what follows its last [SEP]."""
    spec = SequenceSpec((), 64, answer_only=answer_only, scratchpad=answer_only and scratchpad)
    text = StreamingText(decode, SEP_ID, spec.answer_only, spec.scratchpad)
    pushed = ids if last_pushed else ids[:-1]
    deltas = [text.push(ids[:t]) for t in range(1, len(pushed) + 1)]
    for t, delta in enumerate(deltas, 1):
        assert delta == ("" if answer_only else decode(ids[:t])[len(decode(ids[: t - 1])) :])
    last = text.finish(ids)
    assert "".join(deltas) + last == text.shown == final_text(decode, ids, SEP_ID, spec)
    if answer_only:
        assert last == decode(after_scratchpad(ids, SEP_ID, spec.scratchpad))


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
        expected.append(expected_updates(model._decode, ids, limit, sep, spec))
    for join_every in (1, 3):
        assert _streamed(model, rows, join_every) == expected
    assert any("".join(d) for d in expected)  # some rows show text
    assert any(len([x for x in d if x]) > 2 for d in expected)  # and some stream it in several pieces


def _rows(model: BuiltinModel, audios: list[np.ndarray]) -> list[tuple[SequenceSpec, object]]:
    scenes = [render(make_scene(seed)) for seed in range(6)]
    captions = [(model.sequence("caption", None, n), scene) for n, scene in zip([32, 5, 40], scenes, strict=False)]
    answers = [(model.sequence("vqa", q, 16), scene) for q, scene in zip(QUESTIONS, scenes[2:], strict=True)]
    spoken = [(model.sequence("transcribe", None, model.config.decoder.max_len - 1), audio) for audio in audios]
    twice = (model.sequence("vqa", TWICE[1], 16), render(make_scene(TWICE[0])))
    return [row for trio in zip(captions, answers, spoken, strict=False) for row in trio] + answers[3:] + [twice]


@pytest.fixture(scope="module")
def audios() -> list[np.ndarray]:
    return [soxr.resample(*speech(s), 16_000).astype(np.float32) for s in SPOKEN]


STEP_SHAPES = {"dynamic": DecodeOptions(), "fixed": DecodeOptions(fixed_shapes=True)}


@needs_espeak
@pytest.mark.parametrize("shapes", sorted(STEP_SHAPES))
def test_streams_of_the_tiny_model_follow_the_rule(
    tiny: BuiltinModel, audios: list[np.ndarray], shapes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny random model writes odd token sequences: `##` pieces after [SEP], punctuation, special tokens.
    With a step of fixed shapes per bucket too (rows of every kind in one state)."""
    monkeypatch.setattr(tiny, "decode_options", STEP_SHAPES[shapes])
    _check(tiny, _rows(tiny, audios))


@needs_espeak
@pytest.mark.parametrize("shapes", sorted(STEP_SHAPES))
def test_streams_of_the_shipped_model_follow_the_rule(
    shipped: BuiltinModel, audios: list[np.ndarray], shapes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real captions, answers after their scratchpads (one about objects the scene lacks), and transcripts
    (with fixed shapes too)."""
    monkeypatch.setattr(shipped, "decode_options", STEP_SHAPES[shapes])
    rows = _rows(shipped, audios)
    lacking = _greedy_ids(shipped, *reversed(rows[-1]))  # type: ignore[arg-type]
    assert lacking.count(SEP_ID) >= 1, decode(lacking)  # a scratchpad, then the answer
    _check(shipped, rows)
