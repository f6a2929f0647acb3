"""The decoding step with fixed shapes per bucket (`DecodeOptions.fixed_shapes`), rows in their own slots, and
each context's keys and values copied once; the CUDA-graph path's fallback where capture fails.

Token-for-token equality with `greedy_decode` under joins and leaves is in tests/model/test_continuous.py,
test_streaming_text.py (captions, answers, transcripts of the tiny and shipped models) and test_audio.py (rows
of images and audio in one masked state), each with and without fixed shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch

from model.config import PRESETS
from model.generate import DecodeState, SequenceSpec, encode_contexts, greedy_decode
from model.step_graphs import DecodeOptions, bucket
from tests.model.test_generation import _image_tokens, _random_module

EOS, PAD, SEP = 3, 0, 4
FIXED = DecodeOptions(fixed_shapes=True)


def _detokenize(ids: list[int]) -> str:
    return " ".join(map(str, ids))


def _alone(module: Any, tokens: torch.Tensor, prompt: tuple[int, ...], limit: int) -> str:
    [ids] = greedy_decode(module.decoder, tokens, [list(prompt)], [limit], eos_id=-1, pad_id=PAD)
    return _detokenize(ids)


def _each_alone(module: Any, tokens: torch.Tensor, specs: list[SequenceSpec]) -> list[str]:
    return [_alone(module, tokens[i : i + 1], spec.prompt, spec.max_new_tokens) for i, spec in enumerate(specs)]


def _record_steps(state: DecodeState) -> list[tuple[Any, ...]]:
    """The shapes of every one-token forward (a step) the state runs from now on."""
    seen: list[tuple[Any, ...]] = []
    forward: Callable[..., torch.Tensor] = state.decoder.forward_slots

    def recording(ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, *rest: Any) -> torch.Tensor:
        _, cross_kv, rows, keys, _ = rest
        if ids.shape[1] == 1:
            cross = tuple(cross_kv[0].k.shape)
            seen.append((tuple(ids.shape), tuple(mask.shape), keys, cross, rows))
        return forward(ids, positions, mask, *rest)

    state.decoder.forward_slots = recording  # type: ignore[method-assign]
    return seen


def test_bucket_sizes() -> None:
    assert [bucket(n, 32) for n in (0, 1, 2, 3, 5, 8, 9, 31, 32)] == [1, 1, 2, 4, 8, 8, 16, 32, 32]
    assert bucket(5, 6) == 6 and bucket(3, 3) == 3  # the largest bucket is the capacity


@pytest.mark.parametrize("fixed", [False, True])
def test_a_fixed_shape_step_has_the_same_shapes_step_after_step_within_a_bucket(fixed: bool) -> None:
    """Rows of different lengths join and leave: with fixed shapes every step of a bucket has the same
    shapes (and runs over a bucket of slots, attending to all max_len positions); without, the attended
    length grows every step. The texts are greedy decoding's either way."""
    module = _random_module(PRESETS["tiny"], 0)
    tokens = _image_tokens(module, 5)
    options = DecodeOptions(fixed_shapes=fixed)
    state = DecodeState(module.decoder, 8, tokens.shape[1], -1, PAD, SEP, _detokenize, options=options)
    seen = _record_steps(state)
    specs = [SequenceSpec((2, *range(5, 5 + i)), 6 + 3 * i) for i in range(5)]
    encodings = encode_contexts(module.decoder, tokens)
    rows, texts = [0, 1, 2], {}
    updates = state.prefill(specs[:3], encodings[:3])
    joined = False
    while rows:
        keep = [r for r, update in enumerate(updates) if not update.finished]
        texts.update({rows[r]: update.text for r, update in enumerate(updates) if update.finished})
        state.filter(keep)
        rows = [rows[r] for r in keep]
        if not joined and len(seen) == 3:  # two more join mid-way
            updates = state.step() + state.prefill(specs[3:], encodings[3:])
            rows, joined = [*rows, 3, 4], True
            continue
        updates = state.step() if rows else []
    assert [texts[i] for i in range(5)] == _each_alone(module, tokens, specs)
    max_len = module.config.decoder.max_len
    by_width: dict[int, set[tuple[Any, ...]]] = {}
    for ids_shape, mask_shape, keys, cross, _ in seen:
        by_width.setdefault(ids_shape[0], set()).add((ids_shape, mask_shape, keys, cross))
    if fixed:
        assert set(by_width) <= {1, 2, 4, 8} and len(by_width) > 1  # buckets, several of them
        assert all(len(shapes) == 1 for shapes in by_width.values())  # one set of shapes per bucket
        assert all(keys == max_len for _, _, keys, _, _ in seen)
    else:
        assert len({keys for _, _, keys, _, _ in seen}) > 5  # the attended length changes step after step


def test_rows_keep_their_slots_until_the_bucket_shrinks_and_join_into_the_lowest_free_one() -> None:
    """With fixed shapes a row that leaves frees its slot and no other row moves (nothing is copied) while
    the bucket stays the same; once the rows fit a smaller bucket the rows past it move down; a joining row
    takes the lowest free slot. Every text still equals greedy decoding alone."""
    module = _random_module(PRESETS["tiny"], 1)
    tokens = _image_tokens(module, 9)
    state = DecodeState(module.decoder, 8, tokens.shape[1], -1, PAD, SEP, _detokenize, options=FIXED)
    encodings = encode_contexts(module.decoder, tokens)
    specs = [SequenceSpec((2, 5 + i), 30) for i in range(9)]
    expected = [_alone(module, tokens[i : i + 1], s.prompt, 30) for i, s in enumerate(specs)]
    texts: dict[int, str] = {}
    shown = {i: "" for i in range(9)}
    rows = list(range(8))

    def slots() -> list[int]:
        return [row.slot for row in state._rows]

    def run(updates: list[Any]) -> None:
        for r, update in enumerate(updates):
            shown[rows[r]] += update.delta

    run(state.prefill(specs[:8], encodings[:8]))
    run(state.step())
    state.filter([0, 2, 3, 4, 5, 6, 7])  # sequence 1 leaves (cancelled): 7 rows, bucket 8
    rows = [0, 2, 3, 4, 5, 6, 7]
    assert slots() == [0, 2, 3, 4, 5, 6, 7]  # nobody moved
    run(state.step())
    state.filter([0, 4, 5, 6])  # 4 rows left: bucket 4, so the rows in slots 5, 6, 7 move into 1, 2, 3
    rows = [0, 5, 6, 7]
    assert slots() == [0, 1, 2, 3]
    run(state.step())
    state.filter([1, 2, 3])  # sequence 0 leaves: 3 rows, still bucket 4
    rows = [5, 6, 7]
    assert slots() == [1, 2, 3]
    [joined] = state.prefill(specs[8:], encodings[8:])  # joins into the hole
    shown[8] += joined.delta
    rows.append(8)
    assert slots() == [1, 2, 3, 0]
    while rows:
        updates = state.step()
        run(updates)
        for r, update in enumerate(updates):
            if update.finished:
                texts[rows[r]] = update.text
        keep = [r for r, update in enumerate(updates) if not update.finished]
        state.filter(keep)
        rows = [rows[r] for r in keep]
    assert [texts[i] for i in (5, 6, 7, 8)] == [expected[i] for i in (5, 6, 7, 8)]
    assert all(shown[i] == texts[i] for i in (5, 6, 7, 8))


def test_without_fixed_shapes_a_leaving_row_moves_only_the_rows_past_the_others() -> None:
    """The default keeps the slots dense with the fewest moves: the last row fills the hole."""
    module = _random_module(PRESETS["tiny"], 2)
    tokens = _image_tokens(module, 5)
    state = DecodeState(module.decoder, 5, tokens.shape[1], -1, PAD, SEP, _detokenize)
    state.prefill([SequenceSpec((2,), 10)] * 5, encode_contexts(module.decoder, tokens))
    state.filter([0, 2, 3, 4])
    assert [row.slot for row in state._rows] == [0, 2, 3, 1]


def test_each_context_owns_exactly_its_keys_and_values() -> None:
    """Encodings are projected one context at a time: their keys and values are views of one tensor that
    holds exactly them (no copy was made, and none keeps a batch's memory alive in the encoder cache)."""
    module = _random_module(PRESETS["tiny"], 3)
    tokens = _image_tokens(module, 3)
    lengths = [tokens.shape[1], 5, 9]
    encodings = encode_contexts(module.decoder, tokens, lengths)
    storages = set()
    for i, (encoding, n) in enumerate(zip(encodings, lengths, strict=True)):
        assert all(k.shape[1] == n for k, _ in encoding.cross_kv)
        held = 0
        for k, v in encoding.cross_kv:
            assert k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
            held += k.untyped_storage().nbytes()
            storages.add(k.untyped_storage().data_ptr())
        assert held == encoding.nbytes
        batch = module.decoder.cross_kv(tokens[:, :n])
        for (k, v), (k_all, v_all) in zip(encoding.cross_kv, batch, strict=True):
            assert torch.allclose(k, k_all[i], atol=1e-6) and torch.allclose(v, v_all[i], atol=1e-6)
    assert len(storages) == 3 * len(module.decoder.blocks)


def test_cuda_graphs_that_cannot_be_captured_fall_back_to_eager_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Here (no CUDA) capture fails: the state says so once in the log and decodes eagerly, the same tokens."""
    module = _random_module(PRESETS["tiny"], 4)
    tokens = _image_tokens(module, 3)
    options = DecodeOptions(fixed_shapes=True, cuda_graphs=True)
    state = DecodeState(module.decoder, 4, tokens.shape[1], -1, PAD, SEP, _detokenize, options=options)
    specs = [SequenceSpec((2,), 8), SequenceSpec((2, 7), 12), SequenceSpec((2,), 5)]
    rows, texts = [0, 1, 2], {}
    with caplog.at_level(logging.WARNING, logger="model.step_graphs"):
        updates = state.prefill(specs, encode_contexts(module.decoder, tokens))
        while rows:
            texts.update({rows[r]: update.text for r, update in enumerate(updates) if update.finished})
            keep = [r for r, update in enumerate(updates) if not update.finished]
            state.filter(keep)
            rows = [rows[r] for r in keep]
            updates = state.step() if rows else []
    assert state.graphs is not None and state.graphs.failed and not state.graphs.captured
    assert len([r for r in caplog.records if "CUDA graph" in r.getMessage()]) == 1
    assert [texts[i] for i in range(3)] == _each_alone(module, tokens, specs)


def test_options_for_a_device() -> None:
    assert DecodeOptions.resolve(torch.device("cpu")) == DecodeOptions(fixed_shapes=False, cuda_graphs=False)
    assert DecodeOptions.resolve(torch.device("cuda")) == DecodeOptions(fixed_shapes=False, cuda_graphs=False)
    assert DecodeOptions.resolve(torch.device("cuda"), cuda_graphs=True) == DecodeOptions(True, True)
    assert DecodeOptions.resolve(torch.device("cuda"), fixed_shapes=True) == DecodeOptions(True, False)
    assert DecodeOptions.resolve(torch.device("cpu"), fixed_shapes=True) == DecodeOptions(True, False)
    assert DecodeOptions.resolve(torch.device("cpu"), cuda_graphs=True) == DecodeOptions(False, False)  # logged
    assert DecodeOptions.resolve(torch.device("cuda"), False, True) == DecodeOptions(True, True)  # graphs need them
