"""Continuous batching for one stepwise model: its generation state, the row of each sequence, its encoder cache.

Driven by the step loop (`service.scheduler`), on the inference thread only. Sequences join between
steps (`admit`: their images encoded, or taken from the encoder cache, and the prompts prefilled), every
running sequence advances one token per `step`, a finished one answers at once and leaves, and one whose
client left or whose deadline passed is dropped (`drop_gone`) and frees its slot. A transcript's audio is
encoded first, a block of the audio tower per turn (while sequences decode, one audio at a time: encoding
a whole audio in one turn would stall every stream for tens of milliseconds on a CPU), then it joins.
Captions, answers and transcripts of one model are rows of one state. Each row's updates go to its
request's stream sink, if it has one, as they come; a request's timings are set before its sink hears of
the end.

Row i of the state is `rows[i]`, a `SequenceRow` that holds its request: join, step, filter and answer move
them together, and each leaves them in step even when something raises (`service.running.RunningRows`, the
base it shares with text-to-image, keeps them so). A prefill that fails takes back the rows
it may have added; a step, a filter or a state that fails otherwise fails the running sequences with its
error, and the state is made afresh when next needed (never inside an `except`); answering one request that
fails fails that request alone. So no error of the model or the state ends the inference thread.

Faults (`service.faults`): a prefill that runs out of memory is retried in halves (one sequence that does
not fit alone fails with 507). A decoding step that runs out of memory halves the cap on running sequences
and preempts the newest (vLLM's policy: the latest to arrive leave until the rest fit the new cap; one that
ran alone fails with 507): each keeps the tokens it generated (`GenerationState.resumable`) and, when room
allows, is prefilled again with its prompt and those tokens and goes on where it was, so its stream is
neither repeated nor changed; the oldest keep their keys and values and decode on, never prefilled again.
The cap doubles back after `GROW_AFTER_S` seconds without out-of-memory. Any out-of-memory empties the
encoder cache (its tensors freed before the retry). A broken device fails every sequence with 503 and
stops the loop (`DeviceBroken`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import InvalidStateError
from dataclasses import dataclass
from typing import Any, cast

from model import Task
from model.api import GenerationState, RescoresHeard, StepwiseGenerator, Update
from service.batching import Item
from service.encoder_cache import EncoderCache
from service.engine import Generated
from service.errors import NotReady, OutOfMemory
from service.faults import BatchCap, DeviceBroken, free_device_memory, is_device_broken, is_out_of_memory, run_split
from service.metrics import Metrics
from service.running import Row, RunningRows

logger = logging.getLogger(__name__)

GenerationItem = Item[Any, Generated]  # a caption or an answer (`GenerationInput`), or a transcript


@dataclass(eq=False)
class SequenceRow(Row):
    """One sequence of the state: its request, its task, how many tokens its stream has had (`delivered`)."""

    context: Any = None  # its context's encoding, when computed before it joins (a transcript's audio)
    resume: Any = None  # preempted: the spec that goes on where it was (its tokens so far), for its next prefill
    heard: Any = None  # a spoken question's audio encoding, kept to rescore its transcript (`RescoresHeard`)


class Generation(RunningRows[GenerationState, SequenceRow]):
    """The running sequences of one model (captions, answers and transcripts share it when one model does all)."""

    what = "sequences"

    def __init__(
        self,
        model: StepwiseGenerator,
        limits: Mapping[Task, int],
        cache: EncoderCache,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.limits = dict(limits)  # the most sequences of each task running at once
        self.capacity = sum(self.limits.values())
        super().__init__(lambda: model.new_state(self.capacity))
        self.cache = cache
        self.rescores = isinstance(model, RescoresHeard)  # spoken questions' transcripts rescored
        self.metrics = metrics
        self.encoding: list[tuple[list[SequenceRow], Any]] = []  # transcripts whose audio is encoded a block a turn
        self.cap = BatchCap(self.capacity, metrics.batch_cap.labels("decode_step").set)  # running sequences

    def _waiting(self) -> list[SequenceRow]:
        """The transcripts whose audio is being encoded (and whose request is still unanswered)."""
        return [row for rows, _ in self.encoding for row in rows if not row.item.future.done()]

    def free_for(self, task: Task) -> int:
        """How many more sequences of `task` may join now."""
        held = [*self.rows, *self._waiting()]  # (a transcript being encoded will need its row)
        free = self.capacity - len(held) if self._state is None else self._state.free - len(held) + len(self.rows)
        running = sum(row.task == task for row in held)
        return max(0, min(free, self.cap.limit - len(held), self.limits[task] - running))

    def rejoin(self) -> None:
        """Let sequences put back after an out-of-memory step join again, oldest first, as room allows."""
        while self.rejoining:
            task = self.rejoining[0].task
            batch = [row for row in self.rejoining if row.task == task][: self.free_for(task)]
            if not batch:
                return
            self.rejoining = [row for row in self.rejoining if row not in batch]
            self._join(task, batch)

    def admit(self, task: Task, items: Sequence[GenerationItem]) -> None:
        """Join new sequences (prefill). A batch out of memory is retried in halves, one that fails otherwise
        one by one, so a bad sequence fails alone; a broken device raises `DeviceBroken`. Transcripts first
        have their audio encoded, a block of the audio tower a turn (`_advance_encodings`), then join."""
        rows = [SequenceRow(item, task) for item in items]
        if task == "transcribe":
            self._start_encoding(rows)
        else:
            self._join(task, rows)

    def _start_encoding(self, rows: Sequence[SequenceRow]) -> None:
        """Start encoding transcripts' audio: one by one while sequences decode (each turn then runs one block
        of one audio: a short turn), all at once otherwise."""
        started = time.monotonic()
        for row in rows:
            row.item.started_at = started
            self.metrics.queue_duration.labels(row.task).observe(row.item.queue_s)

        def attempt(part: Sequence[SequenceRow]) -> None:
            encoding = self.model.start_audio_encoding([row.item.payload.audio for row in part])
            self.encoding.append((list(part), encoding))

        def out_of_memory(size: int) -> None:
            self.metrics.out_of_memory.labels("transcribe").inc()

        parts = [[row] for row in rows] if self.rows else [list(rows)]
        try:
            for part in parts:
                run_split(part, attempt, _fail, out_of_memory, "transcribe")
        except DeviceBroken:
            for row in rows:
                _fail(row, NotReady("the device failed; the server is unhealthy", retry_after_s=1))
            raise

    def _advance_encodings(self) -> None:
        """One block of the oldest audio encoding while sequences decode (of every one otherwise); those done
        join as room allows (the rest wait in `rejoining`, their encodings kept)."""
        done: list[SequenceRow] = []
        pending: list[tuple[list[SequenceRow], Any]] = []
        decoding = bool(self.rows)
        for rows, encoding in self.encoding:
            if all(row.item.future.done() for row in rows):
                continue  # every client left: it computes no more
            if decoding and (pending or done):
                pending.append((rows, encoding))
                continue
            try:
                contexts = encoding.advance()
            except Exception as e:
                if is_device_broken(e):
                    raise DeviceBroken(f"the device failed: {e}") from e  # (everyone is failed: fail_all)
                logger.exception("encoding %d audios failed", len(rows))
                error = OutOfMemory("the audio does not fit in the device's memory") if is_out_of_memory(e) else e
                for row in rows:
                    _fail(row, error)
                continue
            if contexts is None:
                pending.append((rows, encoding))
                continue
            for row, context in zip(rows, contexts, strict=True):
                if not row.item.future.done():
                    row.context = context
                    done.append(row)
        self.encoding = pending
        if done:
            self.rejoining = [*self.rejoining, *done]
            self.rejoin()

    def _join(self, task: Task, rows: Sequence[SequenceRow]) -> None:
        started = time.monotonic()

        def out_of_memory(size: int) -> None:
            self.metrics.out_of_memory.labels(task).inc()
            self.cap.out_of_memory(len(self.rows) + size)
            self._free_cache()

        try:
            run_split(rows, lambda part: self._prefill(task, part, started), _fail, out_of_memory, task)
        except DeviceBroken:
            for row in rows:
                _fail(row, NotReady("the device failed; the server is unhealthy", retry_after_s=1))
            raise
        self.metrics.inference_duration.labels(task).observe(time.monotonic() - started)

    def _prefill(self, task: Task, rows: Sequence[SequenceRow], started: float) -> None:
        specs = [row.item.payload.spec if row.resume is None else row.resume for row in rows]
        state, before = self.state, len(self.rows)
        try:
            contexts = self._encode(task, rows)
            updates = state.prefill(specs, contexts)
            if len(updates) != len(rows):
                raise RuntimeError(f"a prefill of {len(rows)} sequences gave {len(updates)} updates")
        except BaseException:
            self._take_back(before)
            raise
        for row in rows:
            if not row.item.started_at:  # (not again when it rejoins)
                row.item.started_at = started
                self.metrics.queue_duration.labels(task).observe(row.item.queue_s)
            row.item.batch_size = max(row.item.batch_size, before + len(rows))
        self.metrics.batch_size.labels(task).observe(len(rows))
        for row, context in zip(rows, contexts, strict=True):
            row.context = row.resume = None  # (the state holds them now)
            if self.rescores and task == "transcribe" and row.item.payload.question:  # (a `TranscriptionInput`)
                row.heard = context
        self.rows += rows
        self._apply(rows, updates)

    def _encode(self, task: Task, rows: Sequence[SequenceRow]) -> list[Any]:
        """Each sequence's context: its audio's encoding (a transcript: computed already, unless it joins again
        after out-of-memory) or its image's (via the encoder cache)."""
        payloads = [row.item.payload for row in rows]
        if all(row.context is not None for row in rows):
            return [row.context for row in rows]
        if task == "transcribe":
            return self.model.encode_audios([p.audio for p in payloads])
        return self.cache.get_or_compute(
            [p.image_key for p in payloads],
            lambda missing: self.model.encode_images([payloads[i].image for i in missing]),
        )

    def _take_back(self, count: int) -> None:
        """After a failed prefill: the state keeps its first `count` rows (the prefill may have added some)."""
        if self._state is None or len(self._state) == count:
            return
        try:
            if len(self._state) < count:
                raise RuntimeError(f"the state lost rows in a failed prefill ({len(self._state)} of {count})")
            self._state.filter(range(count))
        except Exception as e:
            logger.exception("taking back a failed prefill's rows failed; failing the running sequences")
            self._give_up_state(e)

    def step(self) -> None:
        """One token for every running sequence (after a part of the audio encodings, and the transcripts
        whose encoding is done joining); the finished ones answer and leave."""
        self._advance_encodings()
        super().step()

    def _out_of_memory(self) -> None:
        self._free_cache()
        self._preempt_newest()

    def _preempt_newest(self) -> None:
        """After a step out of memory: the cap is halved, and the latest sequences to arrive leave the state
        until the rest fit it, each with the spec that goes on where it was, to join again (`rejoin`) when
        room allows; the others stay, their keys and values kept. A sequence that ran alone fails (507)."""
        running = len(self.rows)
        self.metrics.out_of_memory.labels("decode_step").inc()
        self.cap.out_of_memory(running)
        if running == 1:  # it ran alone: it will never fit
            _fail(self.rows[0], OutOfMemory("the sequence does not fit in the device's memory, even alone"))
            self._keep([])
            return
        by_arrival = sorted(range(running), key=lambda i: (self.rows[i].item.enqueued_at, i))
        stay = set(by_arrival[: self.cap.limit])
        leave = [self.rows[i] for i in by_arrival[self.cap.limit :]]
        try:
            for i, row in enumerate(self.rows):
                if i not in stay:
                    row.resume = self.state.resumable(i)
        except Exception as e:
            logger.exception("preempting sequences failed; failing the running sequences")
            self._give_up_state(e)
            return
        logger.warning(
            "a decoding step of %d sequences ran out of memory; preempting the newest %d", running, len(leave)
        )
        self.rejoining = sorted([*leave, *self.rejoining], key=lambda row: row.item.enqueued_at)  # oldest first
        self._keep([row for i, row in enumerate(self.rows) if i in stay])

    def _free_cache(self) -> None:
        """Out of memory: the encoder cache lets its tensors go, and the device gets their memory back."""
        self.cache.clear()
        free_device_memory()

    def _stepped(self, rows: list[SequenceRow], updates: Sequence[Update]) -> None:
        self.cap.fitted()
        self.metrics.decode_steps.inc()
        self.metrics.batch_size.labels("decode_step").observe(len(updates))
        for row in rows:  # what a response reports: the most sequences it decoded with
            row.item.batch_size = max(row.item.batch_size, len(updates))
        self._apply(list(rows), updates)

    def fail_all(self, error: BaseException) -> None:
        """Answer every sequence held with `error` (those whose audio is encoded too)."""
        super().fail_all(error)
        self.encoding = []

    def _apply(self, rows: Sequence[SequenceRow], updates: Sequence[Update]) -> None:
        """Deliver each row's update; the finished (and those whose answer failed) leave."""
        now = time.monotonic()
        answered = {row for row, update in zip(rows, updates, strict=True) if self._deliver(row, update, now)}
        if answered:
            self._keep([row for row in self.rows if row not in answered])

    def _deliver(self, row: SequenceRow, update: Update, now: float) -> bool:
        """One update to its request: its stream told, and its future resolved if finished; True when answered."""
        item = row.item
        try:
            if not item.first_token_at:
                item.first_token_at = now
                self.metrics.time_to_first_token.labels(row.task).observe(now - item.enqueued_at)
            if update.finished:
                item.finished_at = now  # before the stream hears of the end: its timings are read then
            self._tell(row, update, update.tokens, update.finished)
            if update.finished:
                with contextlib.suppress(InvalidStateError):  # answered already (by the watchdog)
                    text, reason, tokens = update.text or "", update.finish_reason, update.tokens
                    if row.heard is not None and text:  # a spoken question: rescored among its neighbours
                        [text] = cast(RescoresHeard, self.model).rescore_heard([row.heard], [text])
                    item.future.set_result(Generated(text, reason, tokens, update.avg_logprob))
            return update.finished
        except Exception as e:
            logger.exception("answering a %s sequence failed", row.task)
            _fail(row, e)
            return True


def _fail(row: Row, error: BaseException) -> None:
    row.item.fail(error)
