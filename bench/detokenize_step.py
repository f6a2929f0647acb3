"""A decoding step's host time per row: incremental detokenisation vs decoding each row's whole text.

In-process, the shipped model, no HTTP: `n` caption rows prefilled together run to the decoder's room
(end of sequence disabled, so every row is 63 tokens long at the end), and every `step` is timed, plus
the time spent in the rows' text rule inside it (detokenising). The full-text rule (what `DecodeState` did
before `IncrementalText`) is swapped in as a drop-in with the same interface, so both run the same loop.
Runs alternate between the two (both orders) in one process, since the machine is shared: compare the
ratio, not absolute times.

    python -m bench.detokenize_step --batch-sizes 1 8 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

import model.streaming_text
from model.checkpoint import WEIGHTS_DIR, load_builtin
from model.generate import DecodeState
from model.multimodal import BuiltinModel
from model.scenes import make_scene, render
from model.streaming_text import IncrementalText
from model.tokenizer import PAD, SEP


class FullText:
    """The rule before incremental detokenisation: decode the whole id list after every token."""

    def __init__(self, detokenize: Callable[[list[int]], str]) -> None:
        self._detokenize = detokenize

    def push(self, ids: list[int], final: bool = False) -> str:
        return self._detokenize(ids)


@contextmanager
def _rule(text_class: type) -> Iterator[None]:
    saved = getattr(model.streaming_text, "IncrementalText")  # noqa: B009 (the name StreamingText looks up)
    setattr(model.streaming_text, "IncrementalText", text_class)  # noqa: B010
    try:
        yield
    finally:
        setattr(model.streaming_text, "IncrementalText", saved)  # noqa: B010


def run(builtin: BuiltinModel, n: int, text_class: type) -> dict[str, float]:
    """Step times of `n` rows from their first token to the decoder's room (ms per row per step)."""
    detokenizing = [0.0]

    class Timed(text_class):  # type: ignore[misc]
        def push(self, ids: list[int], final: bool = False) -> str:
            started = time.perf_counter()
            text: str = super().push(ids, final)
            detokenizing[0] += time.perf_counter() - started
            return text

    state = DecodeState(
        builtin.module.decoder,
        n,
        builtin._context_len,
        eos_id=-1,  # never ends: every row runs to max_len
        pad_id=builtin._ids[PAD],
        sep_id=builtin._ids[SEP],
        detokenize=builtin._decode,
        masked_context=builtin.module.config.audio is not None,
    )
    images = [builtin.prepare_image(render(make_scene(seed))) for seed in range(n)]
    room = builtin.config.decoder.max_len
    specs = [builtin.sequence("caption", None, room) for _ in range(n)]
    with _rule(Timed), torch.inference_mode():
        state.prefill(specs, builtin.encode_images(images))
        detokenizing[0] = 0.0
        steps, started = 0, time.perf_counter()
        while True:
            updates = state.step()
            steps += 1
            if any(update.finished for update in updates):
                break
        elapsed = time.perf_counter() - started
    per_row = 1000 / (steps * n)
    return {"step_ms_per_row": elapsed * per_row, "detokenize_ms_per_row": detokenizing[0] * per_row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    builtin = load_builtin(WEIGHTS_DIR, "cpu")
    rules = {"full_text": FullText, "incremental": IncrementalText}
    for n in args.batch_sizes:
        results: dict[str, list[dict[str, float]]] = {name: [] for name in rules}
        run(builtin, n, IncrementalText)  # warm-up
        for repeat in range(args.repeats):
            order = list(rules) if repeat % 2 == 0 else list(reversed(rules))
            for name in order:
                results[name].append(run(builtin, n, rules[name]))
        row: dict[str, float | int] = {"batch": n}
        for name, runs in results.items():
            for key in ("step_ms_per_row", "detokenize_ms_per_row"):
                row[f"{name}_{key}"] = round(statistics.median(r[key] for r in runs), 4)
        row["step_speedup"] = round(row["full_text_step_ms_per_row"] / row["incremental_step_ms_per_row"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
