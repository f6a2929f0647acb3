"""Long recordings through chunks, in this process: detection and cutting time, transcription time, WER, times.

    python -m bench.long_recording            # a minute and ten minutes, the shipped built-in model, CPU
    python -m bench.long_recording --http     # real-time factor over HTTP: ten minutes alone and 8 at once

and clips within the window (≤ 15 s) holding three sentences 0.6 s apart, transcribed whole (as the routes
do today) and in chunks.

The recordings are the tests' (`tests.support.recordings`): held-out scene sentences read by espeak-ng in a
training voice, 1–2 s pauses over noise at about -50 dBFS. The chunks are transcribed by the model called
directly (batches of 16), the limit an HTTP server's transcription can approach. Prints one line per
recording; docs/models.md quotes them.

`--http`: the real-time factor (seconds of audio per second of wall time) of `/transcribe` on a real server
(the shipped built-in model, one torch thread, its default batch size), for a ten-minute recording alone
and for 8 different ones sent at once, against the limit: the same model called in this process on the
same chunks, cut here as the server cuts them (detection and cutting included), in batches of the
server's size. docs/benchmarks-transcribe.md quotes it.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch

from model import MultimodalModel, speech_chunks
from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.evaluate import word_error_rate
from model.train.speech import eval_sentences
from service.segments import stitch, transcript_text
from service.settings import Settings
from tests.support.audio import encode
from tests.support.recordings import RATE, Recording, long_recording, sentence
from tests.support.server import ServerProcess

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
    parser.add_argument("--http", action="store_true", help="the real-time factor over HTTP, against the limit")
    parser.add_argument("--at-once", type=int, default=8, help="recordings sent together (--http)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_builtin(WEIGHTS_DIR, "cpu")
    assert model.audio is not None
    if args.http:
        real_time_factors(model, args.threads, args.at_once)
        return
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


def ten_minutes(seed: int) -> Recording:
    texts = sentences_for(600.0)
    pauses = list(np.random.default_rng(seed).uniform(1.0, 2.0, len(texts) - 1))
    return long_recording(texts, pauses_s=pauses, voice=VOICE, seed=seed)


def in_process_s(model: MultimodalModel, recordings: list[Recording], batch: int) -> float:
    """Seconds for the model, called here, to cut `recordings` and transcribe their chunks in batches of `batch`."""
    assert model.audio is not None
    started = time.perf_counter()
    chunks = [c.samples for r in recordings for c in speech_chunks(r.samples, RATE, model.audio.max_seconds)]
    for i in range(0, len(chunks), batch):
        model.transcribe(chunks[i : i + batch])
    return time.perf_counter() - started


def real_time_factors(model: MultimodalModel, threads: int, at_once: int) -> None:
    """Ten minutes alone and `at_once` ten-minute recordings together, over HTTP and in this process."""
    recordings = [ten_minutes(seed) for seed in range(at_once)]
    wavs = [encode(r.samples, RATE) for r in recordings]
    batch = Settings().transcribe_max_batch_size
    settings = {
        "MMSERVE_MODEL": "builtin",
        "MMSERVE_DEVICE": "cpu",
        "MMSERVE_TORCH_THREADS": str(threads),
        "MMSERVE_REQUEST_TIMEOUT_S": "3600",
        "MMSERVE_MAX_AUDIO_SECONDS": "660",  # the recordings run a few seconds past ten minutes
    }

    def send(client: httpx.Client, wav: bytes) -> str:
        response = client.post("/transcribe", files={"audio": ("r.wav", wav)})
        response.raise_for_status()
        text: str = response.json()["text"]
        return text

    audio_s = [r.seconds for r in recordings]
    with ServerProcess(settings) as server, httpx.Client(base_url=server.url, timeout=3600) as client:
        warm = sentences_for(30.0)  # the detector and the model's first calls
        send(client, encode(long_recording(warm, [1.5] * (len(warm) - 1), voice=VOICE).samples, RATE))
        started = time.perf_counter()
        alone = send(client, wavs[0])
        alone_s = time.perf_counter() - started
        with ThreadPoolExecutor(at_once) as pool:
            started = time.perf_counter()
            together = list(pool.map(lambda wav: send(client, wav), wavs))
            together_s = time.perf_counter() - started
    reference = " ".join(s.text for s in recordings[0].speech)
    wer = word_error_rate([reference] * (1 + at_once), [alone, *together])
    limit_alone_s = in_process_s(model, recordings[:1], batch)
    limit_together_s = in_process_s(model, recordings, batch)
    print(
        f"real-time factor (audio s / wall s), batches of {batch}, {threads} torch thread(s): one "
        f"{audio_s[0]:.0f} s recording: HTTP {audio_s[0] / alone_s:.1f} ({alone_s:.1f} s), in-process limit "
        f"{audio_s[0] / limit_alone_s:.1f} ({limit_alone_s:.1f} s), ratio {limit_alone_s / alone_s:.2f}; "
        f"{at_once} at once ({sum(audio_s):.0f} s): HTTP {sum(audio_s) / together_s:.1f} ({together_s:.1f} s), "
        f"limit {sum(audio_s) / limit_together_s:.1f} ({limit_together_s:.1f} s), ratio "
        f"{limit_together_s / together_s:.2f}; WER over HTTP {wer:.4f}",
        flush=True,
    )


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
