"""Continuous batching (DecodeState): sequences join and leave between steps, and each one's tokens equal
greedy decoding of that sequence alone (the reference, `greedy_decode` with a batch of one), with the step's
shapes changing every step (the default on a CPU) and with fixed shapes per bucket (`DecodeOptions`)."""

from __future__ import annotations

import random

import pytest
import torch

from model.config import ModelConfig
from model.decoder import causal_mask
from model.generate import DecodeState, ImageEncoding, SequenceSpec, encode_contexts, greedy_decode
from model.multimodal import MultimodalTransformer
from model.step_graphs import DecodeOptions
from tests.model.test_generation import VARIANTS, _image_tokens, _random_module

EOS, PAD, SEP = 3, 0, 4


@pytest.fixture(params=sorted(VARIANTS))
def config(request: pytest.FixtureRequest) -> ModelConfig:
    return VARIANTS[request.param]


@pytest.fixture(params=["dynamic", "fixed"])
def options(request: pytest.FixtureRequest) -> DecodeOptions:
    return DecodeOptions(fixed_shapes=request.param == "fixed")


def _state(
    module: MultimodalTransformer, capacity: int, context_len: int, options: DecodeOptions | None = None
) -> DecodeState:
    detokenize = lambda ids: " ".join(map(str, ids))  # noqa: E731
    return DecodeState(module.decoder, capacity, context_len, EOS, PAD, SEP, detokenize, options=options)


def _encodings(module: MultimodalTransformer, tokens: torch.Tensor) -> list[ImageEncoding]:
    return encode_contexts(module.decoder, tokens)


def _alone(module: MultimodalTransformer, tokens: torch.Tensor, prompt: list[int], limit: int, eos: int) -> str:
    [ids] = greedy_decode(module.decoder, tokens, [prompt], [limit], eos_id=eos, pad_id=PAD)
    return " ".join(map(str, ids))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joins_and_leaves_match_greedy_decoding_alone(config: ModelConfig, seed: int, options: DecodeOptions) -> None:
    """Random arrivals, limits and cancellations; every finished sequence equals its solo greedy decode."""
    rng = random.Random(seed)
    module = _random_module(config, seed)
    n = 14
    tokens = _image_tokens(module, n)
    encodings = _encodings(module, tokens)
    prompts = [[2, *[rng.randrange(5, 40) for _ in range(rng.randrange(0, 6))]] for _ in range(n)]
    limits = [rng.choice([0, 1, 3, 7, 12, 30]) for _ in range(n)]
    eos = rng.choice([EOS, -1])  # -1: no end of sequence, every row runs to its limit
    state = DecodeState(
        module.decoder, 5, tokens.shape[1], eos, PAD, SEP, lambda ids: " ".join(map(str, ids)), options=options
    )
    waiting = list(range(n))
    rows: list[int] = []  # row → sequence
    texts: dict[int, str] = {}
    cancelled: set[int] = set()
    steps = 0
    while waiting or rows:
        # cancel a running sequence now and then: it leaves without an answer
        if rows and rng.random() < 0.1:
            gone = rng.randrange(len(rows))
            cancelled.add(rows[gone])
            keep = [r for r in range(len(rows)) if r != gone]
            state.filter(keep)
            rows = [rows[r] for r in keep]
        joining = waiting[: rng.randrange(0, state.free + 1)]
        waiting = waiting[len(joining) :]
        updates = []
        if joining:
            specs = [SequenceSpec(tuple(prompts[i]), limits[i]) for i in joining]
            updates += state.prefill(specs, [encodings[i] for i in joining])
            rows += joining
            updates = [None] * (len(rows) - len(updates)) + updates
        else:
            updates = state.step() if rows else []
            steps += bool(rows)
        keep = []
        for r, update in enumerate(updates):
            if update is not None and update.finished:
                texts[rows[r]] = update.text
            else:
                keep.append(r)
        state.filter(keep)
        rows = [rows[r] for r in keep]
    assert steps > 10  # the schedule interleaved many steps with joins
    for i in range(n):
        if i in cancelled:
            continue
        assert texts[i] == _alone(module, tokens[i : i + 1], prompts[i], limits[i], eos), f"sequence {i}"
    assert len(texts) + len(cancelled) == n


def test_streamed_deltas_add_up_to_the_text(config: ModelConfig, options: DecodeOptions) -> None:
    module = _random_module(config, 3)
    tokens = _image_tokens(module, 3)
    state = _state(module, 3, tokens.shape[1], options)
    specs = [SequenceSpec((2,), 20), SequenceSpec((2, 9), 5), SequenceSpec((2, 7, 8), 12)]
    shown = ["", "", ""]
    final: dict[int, str] = {}
    rows = [0, 1, 2]
    updates = state.prefill(specs, _encodings(module, tokens))
    while rows:
        keep = []
        for r, update in enumerate(updates):
            shown[rows[r]] += update.delta
            if update.finished:
                final[rows[r]] = update.text
            else:
                keep.append(r)
        state.filter(keep)
        rows = [rows[r] for r in keep]
        updates = state.step() if rows else []
    assert shown == [final[0], final[1], final[2]]
    assert any(final.values())


@pytest.mark.parametrize("written", [[7, SEP, 9], [7, SEP, 8, SEP, 9]])
def test_an_answer_shows_only_what_follows_the_scratchpad(written: list[int]) -> None:
    """Scripted logits: the row writes `7 [SEP] 9` (or its scratchpad twice, `7 [SEP] 8 [SEP] 9`) then ends;
    the answer is told at the end, and nothing before the last [SEP] is ever shown."""
    module = _random_module(VARIANTS["plain"], 0)
    tokens = _image_tokens(module, 1)
    script = iter([*written, EOS])
    vocab = module.config.decoder.vocab_size

    def scripted(hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(hidden.shape[0], vocab)
        logits[:, next(script)] = 1.0
        return logits

    module.decoder.logits = scripted  # type: ignore[method-assign]
    state = _state(module, 1, tokens.shape[1])
    updates = state.prefill([SequenceSpec((2, 5), 10, answer_only=True)], _encodings(module, tokens))
    deltas = [updates[0].delta]
    while not updates[0].finished:
        updates = state.step()
        deltas.append(updates[0].delta)
    assert deltas == [""] * len(written) + ["9"]
    assert updates[0].text == "9" and updates[0].finish_reason == "stop" and updates[0].tokens == len(written)


def test_limits_and_room(options: DecodeOptions) -> None:
    module = _random_module(VARIANTS["plain"], 0)
    tokens = _image_tokens(module, 2)
    state = DecodeState(module.decoder, 2, tokens.shape[1], -1, PAD, SEP, lambda ids: "x" * len(ids), options=options)
    max_len = module.config.decoder.max_len
    long_prompt = tuple([2] * (max_len - 2))
    updates = state.prefill([SequenceSpec((2,), 0), SequenceSpec(long_prompt, 50)], _encodings(module, tokens))
    assert updates[0].finished and updates[0].text == "" and updates[0].finish_reason == "length"
    state.filter([1])
    updates = state.step()  # room for two tokens in all: the prefill's and this one
    assert updates[0].finished and updates[0].text == "xx" and updates[0].finish_reason == "length"
    with pytest.raises(ValueError, match="free slots"):
        state.prefill([SequenceSpec((2,), 1)] * 3, _encodings(module, torch.cat([tokens, tokens[:1]])))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_preempted_sequence_resumed_with_its_tokens_equals_greedy_decoding_alone(
    config: ModelConfig, seed: int, options: DecodeOptions
) -> None:
    """Rows preempted at random steps (their specs taken with `resumable`, the rows filtered out) and
    prefilled again, into the same state or a fresh one, with their tokens so far: every text, and every
    stream's deltas after the tokens it had, equal the uninterrupted greedy decoding."""
    rng = random.Random(seed)
    module = _random_module(config, seed)
    n = 4
    tokens = _image_tokens(module, n)
    encodings = _encodings(module, tokens)
    prompts = [[2, *[rng.randrange(5, 40) for _ in range(rng.randrange(0, 4))]] for _ in range(n)]
    expected = [_alone(module, tokens[i : i + 1], prompts[i], 16, -1) for i in range(n)]
    detokenize = lambda ids: " ".join(map(str, ids))  # noqa: E731
    state = DecodeState(module.decoder, n, tokens.shape[1], -1, PAD, SEP, detokenize, options=options)
    rows = list(range(n))  # row → sequence (a resumed one joins at the end)
    shown = [""] * n
    texts: dict[int, str] = {}
    updates = state.prefill([SequenceSpec(tuple(p), 16) for p in prompts], encodings)
    preempted = 0
    while rows:
        keep = []
        for r, update in enumerate(updates):
            shown[rows[r]] += update.delta
            if update.finished:
                texts[rows[r]] = update.text or ""
            else:
                keep.append(r)
        state.filter(keep)
        rows = [rows[r] for r in keep]
        if len(rows) > 1 and rng.random() < 0.4:  # preempt the newest half, then let them back in
            victims = list(range(len(rows) // 2, len(rows)))
            specs = [state.resumable(r) for r in victims]
            assert all(spec.generated for spec in specs)
            again = [rows[r] for r in victims]
            state.filter(range(len(rows) // 2))
            rows = rows[: len(rows) // 2]
            if rows and rng.random() < 0.5:  # the others into a fresh state too: nothing of the old one is kept
                fresh = DecodeState(module.decoder, n, tokens.shape[1], -1, PAD, SEP, detokenize, options=options)
                older = fresh.prefill([state.resumable(r) for r in range(len(rows))], [encodings[i] for i in rows])
                state = fresh
            else:  # the others go on decoding in their slots
                older = state.step() if rows else []
            resumed = state.prefill(specs, [encodings[i] for i in again])
            preempted += 1
            updates, rows = [*older, *resumed], rows + again
            continue
        updates = state.step() if rows else []
    assert preempted
    assert [texts[i] for i in range(n)] == expected
    assert shown == expected


def test_a_transcript_is_left_blank_only_when_the_end_is_likely_enough(options: DecodeOptions) -> None:
    """`blank_min_prob`: with the end the likeliest first token, the row ends blank when the end is at least that
    likely; below it, the row starts with the likeliest other token (its log-probability under the whole
    distribution) and goes on as greedy decoding of the prompt and that token would."""
    module = _random_module(VARIANTS[sorted(VARIANTS)[0]], 0)
    tokens = _image_tokens(module, 1)
    prompt = [2]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        logits = module.decoder(ids, torch.zeros_like(ids), causal_mask(torch.ones_like(ids, dtype=torch.bool)), tokens)
    logprobs = logits[0, -1].float().log_softmax(-1)
    (end_lp, second_lp), (end, second) = logprobs.topk(2)  # the greedy first token plays the end
    p_end = float(end_lp.exp())

    def decode(blank_min_prob: float) -> tuple[list[int], str | None, float | None]:
        state = DecodeState(module.decoder, 2, tokens.shape[1], int(end), PAD, SEP, str, options=options)
        spec = SequenceSpec(tuple(prompt), 12, blank_min_prob=blank_min_prob)
        [update] = state.prefill([spec], _encodings(module, tokens))
        first_logprob = state._rows[0].logprob_sum
        while not update.finished:
            [update] = state.step()
        return list(state._rows[0].ids), update.finish_reason, first_logprob

    assert decode(0.0)[:2] == ([], "stop")  # greedy: blank
    assert decode(p_end * 0.99)[:2] == ([], "stop")  # the end likely enough: still blank
    written, _, first_logprob = decode(min(1.0, p_end * 1.01))
    [rest] = greedy_decode(module.decoder, tokens, [[*prompt, int(second)]], [11], eos_id=int(end), pad_id=PAD)
    assert written == [int(second), *rest]
    assert first_logprob == pytest.approx(float(second_lp), abs=1e-5)
