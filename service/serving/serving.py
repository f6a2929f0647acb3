"""The one owner of a request's life, from readiness to answer, the same for every route and front end.

Each public method takes a route's `read` (its parsing of the request into a typed ask) and the client's
`Disconnected` waiter, and does, in this order: readiness (503) and support (501), admission (429, before
the body is read when the task is known from the route), the read (under the deadline), preparation in the
decode pool (decoding, the model's preprocessing: 400, 413, 415, 422), submission, then waiting (504 at
the deadline, 499 when the client leaves) or streaming (`Stream`), and the request's metrics and timings,
recorded once, when the request (or its stream) really ends. Results and updates are typed (`types`).

Every method is built from the same private core (`service.serving.core.Core`): `_call` (the request's
record, counted once), `_admit` (room in a task's batcher), `_read` (the route's parsing, under the
deadline), `_prepare` (work in the decode pool, several at once, timed), `_run_submitted` (wait for the
submitted items' outputs) and `_stream` (iterate one item's updates). Each kind has a whole method, a
streamed one and an `_as_asked` one (the request's body says which).

A transcription is one item, or, for a recording longer than the model's window (or with segments asked),
one item per chunk cut at pauses (`model.speech_chunks`, in the decode pool), room reserved for all;
their texts are stitched into timed segments (`service.segments`), and streamed one chunk at a time
(`service.serving.chunks.ChunkStream`). Audio within the window, no segments asked, is heard whole.

Extension point, for text-to-image next (`images` / `images_stream`: prompt → PNG images, with progress):
a pair of methods (or a mixin in its own module that `Serving` inherits) doing
    async with self._call("images", client) as call, with self._admit("images") as slot:
        ask = await self._read(call, read); [payload] = await self._prepare(call, lambda e: e.prepare_...(ask))
        item = slot.submit(payload, call.deadline, sink(updates) if streamed else None)
then `await self._run_submitted(call, [item])` for the whole images, or `await self._stream(call, item,
updates, convert)`, where `convert` turns each denoising step's update into a typed progress update
(not last) and the item's result (the finished images) into the last one. The scheduler delivers step
updates through the item's `on_update` sink, as it does tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError

from model import (
    AudioSpec,
    Criterion,
    SpeechChunk,
    Task,
    default_criteria,
    refusal,
    speech_chunks,
)
from model import Heard as Understood
from model.api import Update
from service.audio import decode_audio, language_code
from service.batching import Item, Reservation
from service.engine import Engine, Generated
from service.errors import InvalidImage, NotUnderstood
from service.images import decode_image
from service.schemas import check_question
from service.segments import Segment, stitch, transcript_text
from service.serving.call import Call, Disconnected
from service.serving.chunks import ChunkStream
from service.serving.core import Core
from service.serving.images import ImageServing
from service.serving.questions import SPOKEN_FIELD, check_answered, known_question
from service.serving.stream import Stream, sink
from service.serving.types import (
    EmbedAsk,
    Embeddings,
    Generation,
    GenerationAsk,
    Read,
    TextUpdate,
    Transcript,
    TranscriptionAsk,
)

# a transcription's stream: the clip's text as it decodes, or a chunked recording's segments as they finish
TranscriptStream = Stream[TextUpdate[Transcript]] | ChunkStream[TextUpdate[Transcript]]


class Serving(ImageServing, Core):  # ImageServing: text to image (`service.serving.images`)
    """Generate (captions, answers), embed (texts, images), transcribe, make images: whole or streamed."""

    # What routes ask besides the work itself.
    def max_new_tokens(self, task: Task, asked: int | None) -> int:
        """The tokens a caption or an answer may take: what was asked, bounded by the server's limit."""
        if task == "vqa":
            return min(asked or self.settings.vqa_max_new_tokens, self.settings.vqa_max_new_tokens)
        return min(asked or self.settings.default_max_new_tokens, self.settings.max_new_tokens_limit)

    @property
    def spoken_criteria(self) -> list[Criterion]:
        """What refuses a spoken question (`model.understanding`), from the settings."""
        s = self.settings
        return default_criteria(s.spoken_max_no_speech_prob, s.spoken_min_avg_logprob, s.spoken_refuse_loops)

    def prompt_tokens(self, task: Task, question: str | None) -> int:
        return self.runtime.ensure_ready().prompt_tokens(task, question)

    # Captions and answers.
    async def generate(self, read: Read[GenerationAsk], client: Disconnected, task: Task | None = None) -> Generation:
        """A caption or an answer, whole. `task` given: admitted before the body is read; else after."""
        result = await self._generate(read, client, task, stream=False)
        assert isinstance(result, Generation)
        return result

    async def generate_stream(
        self, read: Read[GenerationAsk], client: Disconnected, task: Task | None = None
    ) -> Stream[TextUpdate[Generation]]:
        """A caption or an answer as it is decoded; returns once its first update came."""
        result = await self._generate(read, client, task, stream=True)
        assert isinstance(result, Stream)
        return result

    async def generate_as_asked(
        self, read: Read[GenerationAsk], client: Disconnected, task: Task | None = None
    ) -> Generation | Stream[TextUpdate[Generation]]:
        """Whole or streamed, as the ask says (`stream`: the request's body decides)."""
        return await self._generate(read, client, task, stream=None)

    async def _generate(
        self, read: Read[GenerationAsk], client: Disconnected, task: Task | None, stream: bool | None
    ) -> Generation | Stream[TextUpdate[Generation]]:
        async with self._call(task or "caption", client) as call:
            updates: asyncio.Queue[Any] = asyncio.Queue()
            ask, items, heard = await self._submit_generation(call, read, task, stream, updates)
            if items[-1].on_update is None:
                [generated] = await self._run_submitted(call, items[-1:])
                return self._generation(call, ask, generated, items, heard)

            def convert(entry: Any) -> tuple[TextUpdate[Generation], bool]:
                update = _text_update(entry)
                done = self._generation(call, ask, update, items, heard) if update.finished else None
                return TextUpdate(update.delta, done), update.finished

            return await self._stream(call, items[-1], updates, convert)

    # Embeddings.
    async def embed(self, read: Read[EmbedAsk], client: Disconnected) -> Embeddings:
        """Texts and images embedded in one space, in the ask's order (images decoded in parallel)."""
        async with self._call("embed_text", client) as call:
            self.runtime.ensure_ready()
            ask = await self._read(call, read)
            texts = {i: x for i, x in enumerate(ask.inputs) if isinstance(x, str)}
            images = {i: x for i, x in enumerate(ask.inputs) if isinstance(x, bytes)}
            if not texts:
                call.task = "embed_image"
            with ExitStack() as stack:  # admission for both kinds first, then preparation, then queueing
                text_slots = stack.enter_context(self._admit("embed_text", len(texts))) if texts else None
                image_slots = stack.enter_context(self._admit("embed_image", len(images))) if images else None
                max_pixels = self.settings.max_image_pixels

                def image_work(i: int, data: bytes) -> Callable[[Engine], Any]:
                    param = ask.image_param.format(i) if ask.image_param else None
                    return lambda e: e.prepare_image(
                        "embed_image", _decoded_image(data, max_pixels, param, e.input_size("embed_image"))
                    )

                works = [lambda e: [e.prepare_text("embed_text", t) for t in texts.values()]] if texts else []
                prepared = await self._prepare(call, *works, *(image_work(i, x) for i, x in images.items()))
                text_payloads = prepared.pop(0) if texts else []
                queued = dict(zip(images, _submit_all(image_slots, prepared, call), strict=True))
                queued.update(zip(texts, _submit_all(text_slots, text_payloads, call), strict=True))
            order = sorted(queued)
            vectors = await self._run_submitted(call, [queued[i] for i in order])
            return Embeddings(
                vectors,
                self.model_name(call.task),
                await self._count_tokens(list(texts.values()), text_payloads),
                call.time([queued[i] for i in order]),
            )

    # Transcriptions.
    async def transcribe(self, read: Read[TranscriptionAsk], client: Disconnected) -> Transcript:
        """Speech to text, whole."""
        result = await self._transcribe(read, client, stream=False)
        assert isinstance(result, Transcript)
        return result

    async def transcribe_stream(self, read: Read[TranscriptionAsk], client: Disconnected) -> TranscriptStream:
        """Speech to text as it is decoded (one last update for models that transcribe whole batches); a chunked
        recording's one segment at a time (`ChunkStream`)."""
        result = await self._transcribe(read, client, stream=True)
        assert not isinstance(result, Transcript)
        return result

    async def transcribe_as_asked(
        self, read: Read[TranscriptionAsk], client: Disconnected
    ) -> Transcript | TranscriptStream:
        """Whole or streamed, as the ask says."""
        return await self._transcribe(read, client, stream=None)

    async def _transcribe(
        self, read: Read[TranscriptionAsk], client: Disconnected, stream: bool | None
    ) -> Transcript | TranscriptStream:
        async with self._call("transcribe", client) as call:
            updates: asyncio.Queue[Any] = asyncio.Queue()
            heard = await self._submit_transcription(call, read, stream, updates)
            items = heard.items
            if heard.chunks is not None:
                if not heard.streamed:
                    results = await self._run_submitted(call, items)
                    return self._transcript(call, [_text_update(r) for r in results], heard)
                return await self._chunk_stream(call, heard)
            if items[0].on_update is None:
                [result] = await self._run_submitted(call, items)
                return self._transcript(call, [_text_update(result)], heard)

            def convert(entry: Any) -> tuple[TextUpdate[Transcript], bool]:
                update = _text_update(entry)
                done = self._transcript(call, [update], heard) if update.finished else None
                return TextUpdate(update.delta, done), update.finished

            return await self._stream(call, items[0], updates, convert)

    async def _chunk_stream(self, call: Call, heard: Heard) -> ChunkStream[TextUpdate[Transcript]]:
        """A chunked recording's transcript, a segment per update (in order of time) as its chunk finishes."""
        assert heard.chunks is not None
        chunks, outputs, told = heard.chunks, list[Update](), 0

        def convert(index: int, result: Any) -> tuple[TextUpdate[Transcript], bool]:
            nonlocal told
            last = index >= len(chunks) - 1
            if result is None:  # no chunks: no speech
                return TextUpdate("", self._transcript(call, [], heard)), True
            outputs.append(_text_update(result))
            segments = _stitched(chunks[: index + 1], outputs, heard)  # in order of time: earlier ones are as told
            segment = segments[-1] if len(segments) > told else None
            delta = "" if segment is None else (" " if told else "") + segment.text
            told = len(segments)
            return TextUpdate(delta, self._transcript(call, outputs, heard) if last else None, segment), last

        stream = ChunkStream(call, heard.items, convert)
        await stream.start()
        return stream

    # Generation's and transcription's own steps.
    async def _submit_generation(
        self, call: Call, read: Read[GenerationAsk], task: Task | None, stream: bool | None, updates: asyncio.Queue[Any]
    ) -> tuple[GenerationAsk, list[Item[Any, Any]], str | None]:
        """The ask read and its generation submitted: returns its items (a spoken question's transcription
        first, then the generation) and the question heard."""
        with ExitStack() as stack:
            slot = stack.enter_context(self._admit(task)) if task else None
            engine = self.runtime.ensure_ready()  # 503 before the body is read, even when only the body says the task
            ask = await self._read(call, read)
            call.task = ask.task
            slot = slot or stack.enter_context(self._admit(ask.task))
            limit = self.max_new_tokens(ask.task, ask.max_new_tokens)
            max_pixels = self.settings.max_image_pixels
            question, heard, earlier = known_question(engine, ask.task, ask.question), None, []
            if ask.question_audio is not None:
                image, (heard, hearing) = await self._hear_with_image(call, ask, max_pixels)
                question, earlier = known_question(engine, ask.task, heard, spoken=True), [hearing]
                [payload] = await self._prepare(call, lambda e: e.prepare_generation(ask.task, image, question, limit))
            else:
                [payload] = await self._prepare(
                    call,
                    lambda e: e.prepare_generation(
                        ask.task,
                        _decoded_image(ask.image, max_pixels, ask.image_param, e.input_size(ask.task)),
                        question,
                        limit,
                    ),
                )
            streamed = ask.stream if stream is None else stream
            item = slot.submit(payload, call.deadline, sink(updates) if streamed else None)
        return ask, [*earlier, item], heard

    async def _hear_with_image(
        self, call: Call, ask: GenerationAsk, max_pixels: int
    ) -> tuple[Any, tuple[str, Item[Any, Any]]]:
        """A spoken question's image decoded while its audio is prepared; a bad image (400) fails before any
        transcription is queued. Then the question heard, which must be a question (422 on the field)."""
        assert ask.question_audio is not None
        audio = ask.question_audio
        with self._admit("transcribe") as slot:
            spec = self.runtime.ensure_ready().audio_spec("transcribe")
            max_seconds = self.settings.max_audio_seconds
            image, payload = await self._prepare(
                call,
                lambda e: _decoded_image(ask.image, max_pixels, ask.image_param, e.input_size(ask.task)),
                lambda e: e.prepare_transcription(
                    "transcribe",
                    decode_audio(audio, spec, max_seconds, SPOKEN_FIELD).samples,
                    None,
                    question=self.settings.spoken_rescoring,
                ),
            )
            item = slot.submit(payload, call.deadline)
        [result] = await self._run_submitted(call, [item])
        heard: str = result.text
        understood = Understood(heard, result.avg_logprob, payload.no_speech_prob, result.finish_reason)
        reason = refusal(understood, self.spoken_criteria)
        if reason is not None:
            raise NotUnderstood(f"could not understand the spoken question ({reason}): heard {_quoted(heard)}", heard)
        try:
            check_question(
                heard,
                self.settings,
                f"nothing was heard in {SPOKEN_FIELD}: its transcript is blank",
                f"the question heard in {SPOKEN_FIELD}",
            )
        except ValueError as e:
            raise RequestValidationError(
                [{"type": "question_heard", "loc": ("body", SPOKEN_FIELD), "msg": str(e), "input": heard[:200]}]
            ) from e
        return image, (heard, item)

    def _generation(
        self, call: Call, ask: GenerationAsk, out: Any, items: Sequence[Item[Any, Any]], heard: str | None
    ) -> Generation:
        """The finished generation; a closed-grammar model's empty answer is a 422 (`check_answered`)."""
        engine, spoken = self.runtime.engine, heard is not None
        if engine is not None:
            question = heard if spoken else ask.question
            check_answered(engine, ask.task, question, out.text or "", out.finish_reason, spoken)
        return Generation(
            text=out.text or "",
            finish_reason=out.finish_reason,
            tokens=out.tokens,
            model=self.model_name(ask.task),
            timings=call.time(items[-1:], items[:-1]),
            heard=heard,
        )

    async def _submit_transcription(
        self, call: Call, read: Read[TranscriptionAsk], stream: bool | None, updates: asyncio.Queue[Any]
    ) -> Heard:
        """The audio decoded (up to `max_audio_seconds`) and, when it is longer than the model's window or
        segments are asked for, cut at pauses (`model.speech_chunks`, in the decode pool): each chunk is its own
        item, room reserved for all of them. Audio that fits the window, with no segments asked, is one item."""
        with ExitStack() as stack:
            first = stack.enter_context(self._admit("transcribe"))
            ask = await self._read(call, read)
            spec = self.runtime.ensure_ready().audio_spec("transcribe")
            language = language_code(ask.language, spec)
            max_seconds = self.settings.max_audio_seconds

            def prepare(engine: Engine) -> tuple[list[Any], list[SpeechChunk] | None, float]:
                audio = decode_audio(ask.audio, spec, max_seconds, ask.field, chunked=True)
                fits = audio.samples.size <= spec.max_seconds * spec.sampling_rate
                chunks = heard_chunks(audio.samples, spec, fits) if ask.segments or not fits else None
                pieces = [c.samples for c in chunks] if chunks is not None else [audio.samples]
                no_speech = [c.no_speech_prob for c in chunks] if chunks is not None else [None]
                payloads = [
                    engine.prepare_transcription("transcribe", p, language, s)
                    for p, s in zip(pieces, no_speech, strict=True)
                ]
                return payloads, chunks, audio.seconds

            [(payloads, chunks, seconds)] = await self._prepare(call, prepare)
            streamed = ask.stream if stream is None else stream
            if chunks is not None:
                items = [first.submit(payloads[0], call.deadline)] if payloads else []
                if len(payloads) > 1:  # room for the other chunks too (429 if the queue has none)
                    more = stack.enter_context(self._admit("transcribe", len(payloads) - 1))
                    items += [more.submit(p, call.deadline) for p in payloads[1:]]
            else:
                items = [first.submit(payloads[0], call.deadline, sink(updates) if streamed else None)]
        return Heard(items, chunks, seconds, language, streamed, [p.no_speech_prob for p in payloads])

    def _transcript(self, call: Call, outputs: list[Update], heard: Heard) -> Transcript:
        """The transcript of the items' outputs: stitched into segments when the audio was cut into chunks; its
        confidence the whole clip's, or its segments' (their tokens' mean log-probability, the most speech-like
        segment's no-speech probability)."""
        model = self.model_name("transcribe")
        timings = call.time(heard.items)
        seconds = round(heard.seconds, 3)
        if heard.chunks is None:
            [out] = outputs
            no_speech = heard.no_speech_probs[0]
            return Transcript(out.text or "", model, heard.language, seconds, timings, None, out.avg_logprob, no_speech)
        segments = _stitched(heard.chunks, outputs, heard)
        logprobs = [(s.avg_logprob, s.tokens) for s in segments]
        scored = sum(n for _, n in logprobs)
        known = all(x is not None for x, _ in logprobs) and scored > 0
        avg_logprob = sum((x or 0.0) * n for x, n in logprobs) / scored if known else None
        heard_speech = [s.no_speech_prob for s in segments if s.no_speech_prob is not None]
        no_speech = min(heard_speech) if heard_speech else None
        text = transcript_text(segments)
        return Transcript(text, model, heard.language, seconds, timings, segments, avg_logprob, no_speech)

    async def _count_tokens(self, texts: list[str], payloads: list[Any]) -> int:
        """The texts' tokens, from the ids their preparation made (no second tokenisation); models whose
        prepared text is not ids count in the decode pool."""
        if all(isinstance(p, list) for p in payloads):
            return sum(len(p) for p in payloads)
        engine = self.runtime.ensure_ready()
        return sum(await self.in_pool(lambda: engine.count_tokens(texts)))


@dataclass(frozen=True)
class Heard:
    """A transcription submitted: its items (one per chunk, in order of time, or the whole clip's one)."""

    items: list[Item[Any, Any]]
    chunks: list[SpeechChunk] | None  # None: heard whole
    seconds: float  # the audio's duration
    language: str | None
    streamed: bool
    no_speech_probs: list[float | None]  # the detector's, per item


def _stitched(chunks: Sequence[SpeechChunk], outputs: Sequence[Update], heard: Heard) -> list[Segment]:
    """The chunks' outputs so far (the first `len(outputs)`) as segments, with their confidence."""
    n = len(outputs)
    return stitch(
        chunks[:n],
        [out.text or "" for out in outputs],
        [out.avg_logprob for out in outputs],
        heard.no_speech_probs[:n],
        [out.tokens + 1 for out in outputs],  # (the end token is scored too)
    )


def heard_chunks(samples: np.ndarray, spec: AudioSpec, fits: bool) -> list[SpeechChunk]:
    """The recording cut at pauses; audio that fits the window and where no speech was found is one chunk (the
    whole clip, as it is heard without segments: a tone is transcribed as it always was). A longer recording
    with no speech gives no chunks (an empty transcript)."""
    chunks = speech_chunks(samples, spec.sampling_rate, spec.max_seconds)
    if chunks or not fits:
        return chunks
    return [SpeechChunk(0.0, samples.size / spec.sampling_rate, 0.0, samples)]


def _submit_all(slots: Reservation[Any, Any] | None, payloads: Sequence[Any], call: Call) -> list[Item[Any, Any]]:
    return [slots.submit(p, call.deadline) for p in payloads] if slots is not None else []


def _decoded_image(data: bytes, max_pixels: int, param: str | None, input_size: tuple[int, int] | None) -> Any:
    """The image decoded (400 / 413 otherwise), reduced towards the model's `input_size` while decoding, its
    parameter named in the message when one is given."""
    try:
        return decode_image(data, max_pixels, input_size)
    except InvalidImage as e:
        if param is None:
            raise
        raise InvalidImage(f"{param}: {e.message}", param=param) from e


def _quoted(text: str, most: int = 200) -> str:
    """What was heard, in double quotes, cut at `most` characters."""
    return '"' + (text if len(text) <= most else text[:most] + "…") + '"'


def _text_update(entry: Any) -> Update:
    """A model's update as it came; an item's whole result (a model that does not step) as the last update."""
    if isinstance(entry, Generated):
        return Update(entry.text, True, entry.finish_reason, entry.text, entry.tokens, entry.avg_logprob)
    update: Update = entry
    return update
