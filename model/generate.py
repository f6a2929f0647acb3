"""Greedy decoding: the reference (`greedy_decode`, whole batches) and the serving state (`DecodeState`).

`greedy_decode` runs a fixed batch with a growing KV cache until its longest row ends; it is the
reference that `DecodeState`, the continuous-batching state the service uses, is tested against.

Rows of a batch never see one another: prompts are left-padded and padded keys are masked, so each row
computes what it would compute alone (up to float rounding), and a finished row only waits for the
others. Each row has its own limit on new tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from model.api import Update
from model.decoder import Decoder, causal_mask
from model.layers import SlotKV
from model.loops import repeats_at_end
from model.step_graphs import DecodeOptions, StepGraphs, StepOutputs, bucket
from model.streaming_text import StreamingText


@torch.inference_mode()
def greedy_decode(
    decoder: Decoder,
    image_tokens: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    eos_id: int,
    pad_id: int,
    use_cache: bool = True,
    context_mask: torch.Tensor | None = None,
) -> list[list[int]]:
    """Generate up to `max_new_tokens[i]` tokens after `prompts[i]`; returns the new ids, without EOS.

    `context_mask` (B, N): the valid context tokens of each row (audio); None: all (an image's).
    """
    B = len(prompts)
    if B == 0:
        return []
    device = image_tokens.device
    L = max(len(p) for p in prompts)
    room = decoder.config.max_len
    limits = [max(0, min(n, room - len(p))) for p, n in zip(prompts, max_new_tokens, strict=True)]
    ids = torch.full((B, L), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(B, L, dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        ids[i, L - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        valid[i, L - len(prompt) :] = True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, L): each prompt starts at position 0
    outputs: list[list[int]] = [[] for _ in range(B)]
    done = torch.tensor([n == 0 for n in limits], device=device)
    limit = torch.tensor(limits, device=device)
    cache = decoder.new_cache() if use_cache else None
    cross = None if context_mask is None else context_mask[:, None, None, :]

    logits = decoder(ids, positions, causal_mask(valid), image_tokens, cache, cross)[:, -1]  # (B, V)
    for step in range(max(limits)):
        next_ids = logits.argmax(-1)  # (B,)
        finished = done | (next_ids == eos_id)
        for i in (~finished).nonzero().flatten().tolist():
            outputs[i].append(int(next_ids[i]))
        done = finished | (limit <= step + 1)
        if bool(done.all()):
            break
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        last = (positions[:, -1:] + 1).clamp(max=decoder.config.max_len - 1)  # finished rows may run past
        positions = torch.cat([positions, last], dim=1)
        valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        if cache is not None:  # feed only the new token; its keys see every valid one before it
            logits = decoder(ids[:, -1:], positions[:, -1:], valid[:, None, None, :], image_tokens, cache, cross)
        else:
            logits = decoder(ids, positions, causal_mask(valid), image_tokens, context_mask=cross)
        logits = logits[:, -1]
    return outputs


# -- Serving: continuous batching ------------------------------------------------------------------------
# The generation state in the spirit of TGI's `Batch`: `prefill` appends sequences, `step` decodes one token
# for every running sequence, `filter` keeps some. Rows are anonymous: which request a row belongs to is the
# caller's business, and the caller applies the same `filter` to its own list.


@dataclass(frozen=True)
class ImageEncoding:
    """What the decoder needs of one image (or audio): each block's cross-attention keys and values (nh, N, hs).

    An image's N is fixed; an audio's is its own length (a `DecodeState` made with `masked_context`).
    """

    cross_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    # an audio's tower tokens (n, d'), kept when the model rescores heard questions (`model.heard_rescoring`)
    tokens: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        kept = 0 if self.tokens is None else self.tokens.numel() * self.tokens.element_size()
        return kept + sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.cross_kv)


def encode_contexts(
    decoder: Decoder, tokens: torch.Tensor, lengths: Sequence[int] | None = None
) -> list[ImageEncoding]:
    """Each context's encoding from its tokens (B, N, d'), the first `lengths[i]` of row i (None: all N).

    Each is projected on its own, so that its keys and values are views of one projection output that holds
    exactly them: nothing is copied here (a view of a batch's projection would keep the whole batch alive in
    the encoder cache; a clone of it was a copy), and the state copies each one once, into its slot.
    """
    sizes = [tokens.shape[1]] * tokens.shape[0] if lengths is None else list(lengths)
    encodings = []
    for i, n in enumerate(sizes):
        layers = decoder.cross_kv(tokens[i : i + 1, :n])  # each (1, nh, n, hs)
        encodings.append(ImageEncoding(tuple((k[0], v[0]) for k, v in layers)))
    return encodings


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence to generate: its prompt ids, its limit, and how its text is shown.

    `generated`: tokens it has generated already (a sequence preempted and prefilled again): they are
    prefilled after the prompt, count against its limit and are part of its text, and it goes on from there
    as if never interrupted (its first update is its next token's, the text before it counted as shown).
    """

    prompt: tuple[int, ...]
    max_new_tokens: int
    answer_only: bool = False  # VQA: the visible text is what follows the last [SEP] (the scratchpad is hidden)
    scratchpad: bool = False  # answer_only, and the answer follows a scratchpad: with no [SEP] written, no answer
    generated: tuple[int, ...] = ()
    logprob_sum: float = 0.0  # the log-probabilities of `generated` (and of nothing when it is empty), summed
    stop_repeats: int = 0  # end the row when one n-gram repeats this many times in a row (`model.loops`); 0: never
    # a transcript's first token may be the end (a blank transcript: nothing understood) only when the end's
    # probability is at least this; below it, the likeliest other token (0: greedy, as any other sequence)
    blank_min_prob: float = 0.0


@dataclass
class _Row:
    spec: SequenceSpec
    limit: int  # max_new_tokens, bounded by the room left in max_len
    filled: int  # cache positions written (the prompt, then each fed token)
    context: int  # its context tokens (an image's, or its audio's own length)
    text: StreamingText  # what its stream is told (a caption's text as it decodes, an answer at the end)
    slot: int  # where its keys and values are (its slot of every cache, its last token, its position)
    ids: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0  # the chosen tokens' log-probabilities (the end token's too), summed
    scored: int = 0  # how many tokens `logprob_sum` holds
    finished: bool = False


class DecodeState:
    """Up to `capacity` sequences decoding together, their keys and values in preallocated slots.

    Row i's keys and values, last token and position are in slot `rows[i].slot`; a step runs over the
    first slots. Per step: one forward for all rows, one host sync (the new token ids, needed for
    end-of-sequence and streaming). Rows never see one another, so each row's tokens equal greedy decoding
    of that sequence alone. A joining row takes the lowest free slot, and its context's keys and values are
    copied there once; a row that leaves frees its slot, and the others stay where they are, unless the
    step would otherwise run wider than their number needs (then the rows past that width move down into
    the free slots, the fewest moves).

    The step's shapes (`DecodeOptions`): by default it runs over exactly the occupied slots (kept dense)
    and attends over the positions the longest row has filled, so its shapes change every step. With
    `fixed_shapes`, it runs over a bucket of slots (1, 2, 4, ..., capacity; slots with no row decode a
    dummy token at position 0 of their own free slot) and attends over all `max_len` positions, masked past
    each row's own, so its shapes are the same step after step within a bucket; with `cuda_graphs` each
    bucket's step is captured once and replayed (`model.step_graphs`).

    With `masked_context`, rows of different contexts decode together (captions next to transcripts: an
    image's tokens, or an audio's own length): each row's context is masked to its own tokens, the
    cross-attention reads only as many as the longest running row has (with fixed shapes: all of the
    slots), and the context slots grow (never shrink) when a longer one joins.
    """

    def __init__(
        self,
        decoder: Decoder,
        capacity: int,
        context_len: int,
        eos_id: int,
        pad_id: int,
        sep_id: int,
        detokenize: Callable[[list[int]], str],
        masked_context: bool = False,
        options: DecodeOptions | None = None,
    ) -> None:
        """`context_len`: the context tokens of a row (an image's); with `masked_context`, the context slots'
        first size (each row has its own length, the rest masked; the slots grow for a longer one)."""
        parameter = next(decoder.parameters())
        device, dtype = parameter.device, parameter.dtype
        config = decoder.config
        nh, hs = config.heads, config.dim // config.heads
        self.decoder = decoder
        self.capacity = capacity
        self.options = options or DecodeOptions()
        self._eos, self._pad, self._sep = eos_id, pad_id, sep_id
        self._detokenize = detokenize
        self._device = device
        self._context_len = context_len  # the context slots' size (they grow, with `masked_context`)

        def slots(length: int) -> SlotKV:
            shape = (capacity, nh, length, hs)
            return SlotKV(*(torch.zeros(shape, device=device, dtype=dtype) for _ in "kv"))

        self._slots = slots
        self._self_kv = [slots(config.max_len) for _ in decoder.blocks]
        self._cross_kv = [slots(context_len) for _ in decoder.blocks]
        self._context_valid = (
            torch.ones(capacity, context_len, dtype=torch.bool, device=device) if masked_context else None
        )
        self._last = torch.full((capacity,), pad_id, dtype=torch.long, device=device)  # each slot's next input
        self._positions = torch.zeros(capacity, dtype=torch.long, device=device)  # its position (fixed shapes)
        self._keys = torch.arange(config.max_len, device=device)
        self._rows: list[_Row] = []
        self.graphs = StepGraphs(self._fixed_step) if self.options.cuda_graphs else None

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self._rows)

    @torch.inference_mode()
    def prefill(self, specs: Sequence[SequenceSpec], images: Sequence[ImageEncoding]) -> list[Update]:
        """Append sequences (their prompts run in one forward); the first token of each, as updates."""
        k = len(specs)
        if k == 0:
            return []
        if k > self.free:
            raise ValueError(f"{k} sequences do not fit in {self.free} free slots")
        taken = {row.slot for row in self._rows}
        slots = [slot for slot in range(self.capacity) if slot not in taken][:k]
        rows = self._index(slots)
        room = self.decoder.config.max_len
        contexts = [image.cross_kv[0][0].shape[1] for image in images]  # each one's context tokens
        if self._context_valid is None:
            if any(n != self._context_len for n in contexts):
                raise ValueError(f"contexts of {sorted(set(contexts))} tokens in a state of {self._context_len}")
        else:  # each row's own context, the rest masked
            self._grow_context(max(contexts))
            lengths = torch.tensor(contexts, device=self._device)[:, None]
            self._context_valid[rows] = torch.arange(self._context_len, device=self._device) < lengths
        for slot, image, n in zip(slots, images, contexts, strict=True):  # the one copy of its keys and values
            for cache, (k_n, v_n) in zip(self._cross_kv, image.cross_kv, strict=True):
                cache.k[slot, :, :n] = k_n
                cache.v[slot, :, :n] = v_n
        inputs = [(*spec.prompt, *spec.generated) for spec in specs]  # what is prefilled
        length = max(len(tokens) for tokens in inputs)
        ids = torch.full((k, length), self._pad, dtype=torch.long)
        for i, sequence in enumerate(inputs):  # right-padded: a prompt starts at position 0 of its slot
            ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        lengths = torch.tensor([len(tokens) for tokens in inputs])
        valid = torch.arange(length)[None, :] < lengths[:, None]
        ids, lengths, valid = ids.to(self._device), lengths.to(self._device), valid.to(self._device)
        positions = self._keys[:length].expand(k, length)
        cross, context_mask = self._context(rows, contexts)
        hidden = self.decoder.forward_slots(
            ids, positions, causal_mask(valid), self._self_kv, cross, rows, length, context_mask
        )
        last = hidden[torch.arange(k, device=self._device), lengths - 1]  # each prompt's last token
        next_ids, pairs = self._first_tokens(self.decoder.logits(last), specs)
        chosen = pairs.tolist()
        self._last[rows] = next_ids
        start = len(self._rows)
        for spec, filled, context, slot in zip(specs, lengths.tolist(), contexts, slots, strict=True):
            limit = max(0, min(spec.max_new_tokens, room - len(spec.prompt)))
            text = StreamingText(self._detokenize, self._sep, spec.answer_only, spec.scratchpad)
            row = _Row(spec, limit, filled=filled, context=context, text=text, slot=slot)
            for token in spec.generated:  # its state as it was: the same ids, the same text shown
                self._advance(row, token, 0.0)
            row.logprob_sum, row.scored = spec.logprob_sum, len(spec.generated)
            self._rows.append(row)
        return [self._advance(row, int(token), lp) for row, (token, lp) in zip(self._rows[start:], chosen, strict=True)]

    def resumable(self, index: int) -> SequenceSpec:
        """The spec that goes on with row `index` from where it is (its tokens so far as `generated`), when
        prefilled into this state or another after the row has left."""
        row = self._rows[index]
        return replace(row.spec, generated=tuple(row.ids), logprob_sum=row.logprob_sum)

    @torch.inference_mode()
    def step(self) -> list[Update]:
        """One token for every running row (call `filter` to drop the finished ones first)."""
        if not self._rows:
            return []
        if any(row.finished for row in self._rows):
            raise RuntimeError("filter out finished rows before the next step")
        width = self._width(1 + max(row.slot for row in self._rows))
        filled = [0] * width  # a slot with no row decodes a dummy token at position 0 of its own (free) slot
        for row in self._rows:
            filled[row.slot] = row.filled
        positions = torch.tensor(filled, dtype=torch.long)
        if self.options.fixed_shapes:
            self._positions[:width].copy_(positions, non_blocking=True)
            next_ids, pairs = self.graphs.run(width) if self.graphs is not None else self._fixed_step(width)
        else:
            next_ids, pairs = self._dynamic_step(width, positions.to(self._device, non_blocking=True), max(filled) + 1)
        chosen = pairs.tolist()  # (width, 2): the step's one host sync
        # (a failure up to here leaves the rows as they were: the step can be rerun)
        self._last[:width] = next_ids
        for row in self._rows:
            row.filled += 1
        return [self._advance(row, int(chosen[row.slot][0]), chosen[row.slot][1]) for row in self._rows]

    def _dynamic_step(self, width: int, positions: torch.Tensor, keys: int) -> StepOutputs:
        """The step of slots [0, width) over the first `keys` positions and the longest row's context."""
        rows = slice(0, width)
        mask = (self._keys[:keys][None, :] <= positions[:, None])[:, None, None, :]  # (b, 1, 1, keys)
        cross, context_mask = self._context(rows, [row.context for row in self._rows])
        hidden = self.decoder.forward_slots(
            self._last[:width, None], positions[:, None], mask, self._self_kv, cross, rows, keys, context_mask
        )
        return self._greedy(self.decoder.logits(hidden[:, -1]))

    def _fixed_step(self, width: int) -> StepOutputs:
        """The step of slots [0, width) with shapes that depend on `width` alone, reading and writing only the
        state's buffers (as a CUDA graph needs): each row attends to all `max_len` positions, masked past its
        own, and to all the context slots, masked to its own context when contexts differ."""
        rows = slice(0, width)
        positions = self._positions[:width, None]  # (b, 1)
        mask = (self._keys[None, :] <= positions)[:, None, None, :]  # (b, 1, 1, max_len)
        context_mask = None if self._context_valid is None else self._context_valid[rows][:, None, None, :]
        keys = len(self._keys)  # all of them
        hidden = self.decoder.forward_slots(
            self._last[:width, None], positions, mask, self._self_kv, self._cross_kv, rows, keys, context_mask
        )
        return self._greedy(self.decoder.logits(hidden[:, -1]))

    def _first_tokens(self, logits: torch.Tensor, specs: Sequence[SequenceSpec]) -> StepOutputs:
        """The prefilled rows' next tokens: greedy, except that a row with a `blank_min_prob` starting its
        transcript takes the likeliest token other than the end when the end is less likely than that. Each
        chosen token's log-probability is its own under the whole distribution (a doubt stays in `avg_logprob`)."""
        floors = [0.0 if spec.generated else spec.blank_min_prob for spec in specs]
        if not any(floor > 0 for floor in floors):
            return self._greedy(logits)
        logprobs = logits.float().log_softmax(-1)
        unsure = logprobs[:, self._eos].exp() < torch.tensor(floors, device=logprobs.device)
        candidates = logprobs.clone()
        candidates[:, self._eos] = candidates[:, self._eos].masked_fill(unsure, -torch.inf)
        next_ids = candidates.argmax(-1)
        return next_ids, torch.stack([next_ids.float(), logprobs.gather(1, next_ids[:, None])[:, 0]], 1)

    @staticmethod
    def _greedy(logits: torch.Tensor) -> StepOutputs:
        """The greedy tokens (n,) of logits (n, V), and each row's (token, its log-probability) (n, 2): one
        gather on the log-softmax, and one tensor for both (so one transfer to the host)."""
        next_ids = logits.argmax(-1)  # (n,)
        logprobs = logits.float().log_softmax(-1).gather(1, next_ids[:, None])[:, 0]  # (n,)
        # ids are exact in float32 (the vocabulary is far below 2**24)
        return next_ids, torch.stack([next_ids.float(), logprobs], 1)

    def _width(self, rows: int) -> int:
        """How many slots a step over `rows` rows runs: their bucket with fixed shapes, else exactly them."""
        return bucket(rows, self.capacity) if self.options.fixed_shapes else rows

    def _index(self, slots: list[int]) -> slice | torch.Tensor:
        """`slots` as a slice when they are consecutive (views of the caches), else as an index tensor."""
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return slice(slots[0], slots[0] + len(slots))
        return torch.tensor(slots, device=self._device)

    @torch.inference_mode()
    def filter(self, keep: Sequence[int]) -> None:
        """Keep the rows `keep` (ascending), which become rows 0, 1, ...; the others' slots are freed."""
        self._rows = [self._rows[i] for i in keep]
        width = self._width(len(self._rows))
        movers = [row for row in self._rows if row.slot >= width]  # past what the step over the rows needs
        if not movers:
            return
        taken = {row.slot for row in self._rows}
        holes = [slot for slot in range(width) if slot not in taken][: len(movers)]
        dst = torch.tensor(holes, device=self._device)
        src = torch.tensor([row.slot for row in movers], device=self._device)
        for cache in self._self_kv:
            cache.k[dst] = cache.k[src]
            cache.v[dst] = cache.v[src]
        n = max(row.context for row in movers)  # what the moved rows' contexts fill
        for cache in self._cross_kv:
            cache.k[dst, :, :n] = cache.k[src, :, :n]
            cache.v[dst, :, :n] = cache.v[src, :, :n]
        self._last[dst] = self._last[src]
        if self._context_valid is not None:
            self._context_valid[dst] = self._context_valid[src]
        for row, slot in zip(movers, holes, strict=True):
            row.slot = slot

    def _context(self, rows: slice | torch.Tensor, contexts: Sequence[int]) -> tuple[list[SlotKV], torch.Tensor | None]:
        """The cross-attention slots, cut to the longest of `contexts`, and the mask of each of `rows`' own
        context (None when every row's context fills them: the unmasked computation of rows alone)."""
        if self._context_valid is None:
            return self._cross_kv, None
        n = max(contexts)
        cross = [SlotKV(cache.k[:, :, :n], cache.v[:, :, :n]) for cache in self._cross_kv]
        if min(contexts) == n:
            return cross, None
        return cross, self._context_valid[rows, :n][:, None, None, :]  # (B, 1, 1, n)

    def _grow_context(self, n: int) -> None:
        """Make room for a context of `n` tokens in every slot (rounded up to 64: growing is a copy)."""
        if n <= self._context_len:
            return
        size = -(-n // 64) * 64
        old = self._context_len
        grown = []
        for cache in self._cross_kv:
            slots = self._slots(size)
            slots.k[:, :, :old], slots.v[:, :, :old] = cache.k, cache.v
            grown.append(slots)
        assert self._context_valid is not None
        valid = torch.zeros(self.capacity, size, dtype=torch.bool, device=self._device)
        valid[:, :old] = self._context_valid
        self._cross_kv, self._context_valid, self._context_len = grown, valid, size
        if self.graphs is not None:  # they read the old buffers
            self.graphs.clear()

    def _advance(self, row: _Row, token: int, logprob: float) -> Update:
        """Take one generated token into a row: end of sequence, its limit, a loop, or one more token shown."""
        if row.limit == 0:
            return self._finish(row, "length")
        row.logprob_sum += logprob
        row.scored += 1
        if token == self._eos:
            return self._finish(row, "stop")
        row.ids.append(token)
        if len(row.ids) >= row.limit:
            return self._finish(row, "length")
        if row.spec.stop_repeats and repeats_at_end(row.ids, row.spec.stop_repeats):
            return self._finish(row, "repetition")
        return Update(row.text.push(row.ids), tokens=len(row.ids))

    def _finish(self, row: _Row, reason: str) -> Update:
        row.finished = True
        delta = row.text.finish(row.ids)  # the pieces streamed add up to the final text
        avg_logprob = row.logprob_sum / row.scored if row.scored else None
        return Update(delta, True, reason, row.text.shown, len(row.ids), avg_logprob)


def generate_all(
    state: DecodeState,
    specs: Sequence[SequenceSpec],
    images: Sequence[ImageEncoding],
    progress: Callable[[], None] | None = None,
) -> list[str]:
    """Run sequences to the end together (the model's own batched calls); texts in order. `progress` is
    called after every step."""
    return [update.text or "" for update in generate_all_updates(state, specs, images, progress)]


def generate_all_updates(
    state: DecodeState,
    specs: Sequence[SequenceSpec],
    images: Sequence[ImageEncoding],
    progress: Callable[[], None] | None = None,
) -> list[Update]:
    """`generate_all`, each sequence's last update (its text, finish reason and mean log-probability)."""
    finished: list[Update | None] = [None] * len(specs)
    index = list(range(len(specs)))  # row → sequence
    updates = state.prefill(specs, images)
    while True:
        for i, update in zip(index, updates, strict=True):
            if update.finished:
                finished[i] = update
        keep = [row for row, update in enumerate(updates) if not update.finished]
        state.filter(keep)
        index = [index[row] for row in keep]
        if not index:
            return [update or Update("", True, text="") for update in finished]
        updates = state.step()
        if progress is not None:
            progress()
