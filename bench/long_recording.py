"""Long recordings through chunks, in this process: detection and cutting time, transcription time, WER, times.

    python -m bench.long_recording            # a minute and ten minutes, the shipped built-in model, CPU

and clips within the window (≤ 15 s) holding three sentences 0.6 s apart, transcribed whole (as the routes
do today) and in chunks.

The recordings are the tests' (`tests.support.recordings`): held-out scene sentences read by espeak-ng in a
training voice, 1–2 s pauses over noise at about -50 dBFS. The chunks are transcribed by the model called
directly (batches of 16), the limit an HTTP server's transcription can approach. Prints one line per
recording; docs/models.md quotes them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model import MultimodalModel, speech_chunks
from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.evaluate import word_error_rate
from model.train.speech import eval_sentences
from service.segments import stitch, transcript_text
from tests.support.recordings import RATE, long_recording, sentence

VOICE = "en-gb"  # a training accent, espeak-ng's default variant


def sentences_for(seconds: float, pause_s: float = 1.5) -> list[str]:
    """Held-out scene sentences, enough to fill about `seconds` with their pauses."""
    pool, texts = eval_sentences(300), list[str]()
    while sum(sentence(t, VOICE).size for t in texts) / RATE + pause_s * len(texts) < seconds:
        texts.append(pool[len(texts) % len(pool)])
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_builtin(WEIGHTS_DIR, "cpu")
    assert model.audio is not None
    for name, seconds in (("a minute", 60.0), ("ten minutes", 600.0)):
        texts = sentences_for(seconds)
        pauses = list(np.random.default_rng(3).uniform(1.0, 2.0, len(texts) - 1))
        recording = long_recording(texts, pauses_s=pauses, voice=VOICE)
        started = time.perf_counter()
        chunks = speech_chunks(recording.samples, RATE, model.audio.max_seconds)
        chunking_s = time.perf_counter() - started
        started = time.perf_counter()
        heard = [
            text
            for i in range(0, len(chunks), 16)
            for text in model.transcribe([c.samples for c in chunks[i : i + 16]])
        ]
        transcribing_s = time.perf_counter() - started
        segments = stitch(chunks, heard)
        wer = word_error_rate([" ".join(texts)], [transcript_text(segments)])
        timing = "n/a (a sentence was split or merged)"
        if len(segments) == len(recording.speech):
            errors = [
                max(abs(s.start_s - r.start_s), abs(s.end_s - r.end_s))
                for s, r in zip(segments, recording.speech, strict=True)
            ]
            timing = f"{max(errors):.2f} s"
        print(
            f"{name}: {recording.seconds:.1f} s, {len(texts)} sentences, {len(chunks)} chunks; detection and cutting "
            f"{chunking_s:.2f} s, transcription {transcribing_s:.1f} s; WER {wer:.4f}; largest time error {timing}",
            flush=True,
        )
    three_sentence_clips(model)


def three_sentence_clips(model: MultimodalModel, clips: int = 8) -> None:
    """Clips that fit the window, three short sentences each: whole, the model hears one sentence; in chunks, all."""
    assert model.audio is not None
    pool = [s for s in eval_sentences(300) if len(s.split()) <= 8]
    references, whole, chunked = [], [], []
    for k in range(clips):
        texts = pool[3 * k : 3 * k + 3]
        recording = long_recording(texts, pauses_s=[0.6, 0.6], lead_s=0.3, voice=VOICE)
        assert recording.seconds <= model.audio.max_seconds
        references.append(" ".join(texts))
        whole += model.transcribe([recording.samples])
        chunks = speech_chunks(recording.samples, RATE, model.audio.max_seconds)
        chunked.append(transcript_text(stitch(chunks, model.transcribe([c.samples for c in chunks]))))
    print(
        f"{clips} clips of three sentences within the window: WER transcribed whole "
        f"{word_error_rate(references, whole):.3f}, in chunks {word_error_rate(references, chunked):.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
