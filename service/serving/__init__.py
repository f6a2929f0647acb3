"""Serving: the one owner of a request's life, between the routes (which parse and format) and the runtime.

    route ── read (parse the request into a typed ask) ──► Serving.generate / generate_stream / embed /
    transcribe / transcribe_stream ── admit, read, prepare (decode pool), submit, wait or stream ──► runtime

See `service.serving.serving` for the order of the steps and how to add a kind of work (text-to-image next).
"""

from service.serving.call import Disconnected
from service.serving.chunks import ChunkStream
from service.serving.serving import Serving, TranscriptStream
from service.serving.stream import Stream, Updates
from service.serving.types import (
    EmbedAsk,
    Embeddings,
    Generation,
    GenerationAsk,
    Read,
    TextUpdate,
    Transcript,
    TranscriptionAsk,
    given,
)

__all__ = [
    "ChunkStream",
    "Disconnected",
    "EmbedAsk",
    "Embeddings",
    "Generation",
    "GenerationAsk",
    "Read",
    "Serving",
    "Stream",
    "TextUpdate",
    "Transcript",
    "TranscriptStream",
    "TranscriptionAsk",
    "Updates",
    "given",
]
