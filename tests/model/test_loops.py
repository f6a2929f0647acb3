"""Stopping loops (`model.loops`) and scoring tokens in `DecodeState`: a decoder made to repeat one token is cut
short by the repetition check, bounded by its limit without it, and its mean log-probability is the one its
logits give."""

from __future__ import annotations

import math

import pytest
import torch

from model.checkpoint import WEIGHTS_DIR
from model.config import PRESETS
from model.generate import DecodeState, SequenceSpec, generate_all_updates
from model.loops import STOP_REPEATS, repeats_at_end, transcript_token_limit
from model.scenes import Scene, SceneObject
from model.tokenizer import load_tokenizer
from tests.model.test_continuous import _encodings
from tests.model.test_generation import _image_tokens, _random_module

EOS, PAD, SEP = 3, 0, 4


def test_an_ngram_repeated_k_times_at_the_end_is_a_loop() -> None:
    assert repeats_at_end([5, 7, 7, 7, 7], 4)
    assert not repeats_at_end([5, 7, 7, 7], 4)
    assert repeats_at_end([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], 4)
    assert not repeats_at_end([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 4], 4)
    assert not repeats_at_end([1, 2, 3, 1, 2, 3, 1, 2, 3, 9, 1, 2, 3], 4)  # not in a row
    assert not repeats_at_end([1, 2, 3, 4, 5, 6, 7] * 4, 4, longest=6)  # longer than looked for


def test_the_scene_grammar_never_loops() -> None:
    """Four identical objects, the most the grammar repeats, are not a loop (the last comes after "and")."""
    objects = tuple(SceneObject("circle", "red", "small", x, 0.5) for x in (0.1, 0.3, 0.6, 0.9))
    caption = Scene(objects, ((255, 255, 255), (255, 255, 255)), 0).caption
    ids = load_tokenizer(WEIGHTS_DIR / "tokenizer.json").encode(caption, add_special_tokens=False).ids
    assert caption.count("a small red circle") == 4
    assert not any(repeats_at_end(ids[:n], STOP_REPEATS) for n in range(1, len(ids) + 1))


def test_the_length_bound_grows_with_the_audio() -> None:
    assert transcript_token_limit(0.0) == 8
    assert transcript_token_limit(2.0) == 24
    assert transcript_token_limit(15.0) == 128


@pytest.mark.parametrize("stop_repeats", [0, STOP_REPEATS])
def test_a_looping_row_stops_and_its_log_probability_is_its_logits(stop_repeats: int) -> None:
    module = _random_module(PRESETS["tiny"], 0)
    looping = torch.zeros(module.config.decoder.vocab_size)
    looping[7], looping[EOS] = 5.0, 1.0  # token 7 always wins; the end token never does

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        return looping.expand(*hidden.shape[:-1], -1).clone()

    module.decoder.logits = logits  # type: ignore[method-assign]
    tokens = _image_tokens(module, 1)
    state = DecodeState(module.decoder, 2, tokens.shape[1], EOS, PAD, SEP, lambda ids: " ".join(map(str, ids)))
    spec = SequenceSpec((2,), 20, stop_repeats=stop_repeats)
    [update] = generate_all_updates(state, [spec], _encodings(module, tokens))
    expected = float(looping.log_softmax(-1)[7])
    assert update.avg_logprob is not None and math.isclose(update.avg_logprob, expected, rel_tol=1e-5)
    if stop_repeats:
        assert (update.finish_reason, update.text, update.tokens) == ("repetition", "7 7 7 7", 4)
    else:
        assert (update.finish_reason, update.tokens) == ("length", 20)
