"""The speech stages' training pool: utterances synthesised once into shards of log-mel features, read many times.

A pool item is a function of its seed: a spoken scene sentence (`model.train.speech`), or, for a share of the
seeds, audio that is not a scene sentence with an empty transcript (`model.train.out_of_domain`). `build_pool`
makes a pool in parallel processes (float16 features, in shards under a folder); `load_pool` reads it back and
`length_batches` draws batches of similar lengths from it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.audio import log_mel
from model.config import AudioConfig
from model.train.out_of_domain import clip as out_of_domain_clip
from model.train.speech import synthesise, training_utterance

logger = logging.getLogger("model.train")


@dataclass(frozen=True)
class Variety:
    """What a pool holds beyond the plain training utterances."""

    varied: bool = False  # the wider variety of voices and listening conditions (`varied_utterance`)
    out_of_domain: float = 0.0  # this share of the pool is audio that is not a scene sentence (transcript "")


def pool_item(seed: int, rate: int, variety: Variety) -> tuple[str, np.ndarray] | None:
    """The pool's utterance of `seed` as (transcript, samples), or None when its sentence is held out."""
    if variety.out_of_domain and random.Random(seed * 31 + 1).random() < variety.out_of_domain:
        return "", out_of_domain_clip(seed, rate)
    u = training_utterance(seed, variety.varied)
    return None if u is None else (u.text, synthesise(u, rate, seed))


def _features(args: tuple[list[int], AudioConfig, Variety]) -> list[tuple[str, torch.Tensor]]:
    seeds, config, variety = args
    torch.set_num_threads(1)
    out = []
    for seed in seeds:
        item = pool_item(seed, config.sampling_rate, variety)
        if item is not None and len(item[1]) <= config.max_seconds * config.sampling_rate:
            out.append((item[0], log_mel(item[1], config).to(torch.float16)))
    return out


def build_pool(
    folder: Path,
    size: int,
    config: AudioConfig,
    workers: int = 2,
    shard: int = 2000,
    variety: Variety = Variety(),
    first_seed: int = 0,
) -> None:
    """Synthesise the training utterances of seeds `first_seed`, `first_seed` + 1, ... (skipping held-out
    sentences) until `size` are made, into shards of log-mel features (float16) and their texts."""
    folder.mkdir(parents=True, exist_ok=True)
    made, part, items, seed = 0, 0, [], first_seed
    with ProcessPoolExecutor(workers) as pool:
        while made < size:
            span = min(2000, 100 * -(-(size - made) * 5 // 4 // 100))  # seeds this round: a quarter more than needed
            chunks = [(list(range(start, start + 100)), config, variety) for start in range(seed, seed + span, 100)]
            seed += span
            for chunk in pool.map(_features, chunks):
                items += chunk
            while len(items) >= shard or (items and made + len(items) >= size):
                keep = items[: min(shard, size - made)]
                items = items[len(keep) :]
                torch.save({"texts": [t for t, _ in keep], "features": [f for _, f in keep]}, folder / f"{part:03d}.pt")
                made, part = made + len(keep), part + 1
                logger.info("speech pool: %d of %d utterances", made, size)
                if made >= size:
                    return


def load_pool(folder: Path) -> tuple[list[str], list[torch.Tensor]]:
    texts: list[str] = []
    features: list[torch.Tensor] = []
    for path in sorted(folder.glob("*.pt")):
        shard = torch.load(path, weights_only=True)
        texts += shard["texts"]
        features += shard["features"]
    if not texts:
        raise FileNotFoundError(f"no speech pool in {folder}")
    return texts, features


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices with similar lengths (little padding), in a random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    while True:
        # shuffle within windows of 50 batches, then cut into batches, then shuffle the batches
        window = batch_size * 50
        mixed = []
        for start in range(0, len(order), window):
            part = order[start : start + window]
            rng.shuffle(part)
            mixed += sorted(part, key=lambda i: lengths[i])
        batches = [mixed[i : i + batch_size] for i in range(0, len(mixed) - batch_size + 1, batch_size)]
        rng.shuffle(batches)
        yield from batches
