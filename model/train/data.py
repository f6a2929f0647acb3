"""Training batches: fresh synthetic scenes every step, captions and questions as token rows with loss weights."""

from __future__ import annotations

import random
from typing import TypedDict

import torch
from tokenizers import Tokenizer

from model.config import PRESETS
from model.images import to_pixels
from model.scenes import HELD_OUT_SEED_START, Question, Scene, ask, ask_any, make_scene, render
from model.tokenizer import BOS, EOS, PAD, SEP
from model.train.recipe import TrainConfig, max_objects_at


class Batch(TypedDict):
    pixels: torch.Tensor  # (B, 3, H, W)
    seq: torch.Tensor  # (R, T) token rows: B captions, then questions_per_image blocks of B questions
    weight: torch.Tensor  # (R, T - 1) 1 where seq[:, 1:] is a target the loss counts
    captions: list[str]  # the B scenes' captions (the contrastive targets)


class Batches:
    """Deterministic training batches: step `s` always gives the same scenes and questions."""

    def __init__(self, config: TrainConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.ids = {t: token_id(tokenizer, t) for t in (PAD, BOS, EOS, SEP)}

    def __call__(self, step: int) -> Batch:
        B = self.config.batch_size
        base = (self.config.seed * 1_000_003 + step * B) % (HELD_OUT_SEED_START - B)
        rng = random.Random(base)
        most = max_objects_at(self.config, step)
        share = self.config.hard_position_share  # (no draw at all when 0: the batches stay as they were)
        hard = [share > 0 and rng.random() < share for _ in range(B)]
        scenes = [
            _with_three_word_reference(base + i, rng) if hard[i] else make_scene(base + i, max_objects=most)
            for i in range(B)
        ]
        size = PRESETS[self.config.preset].vision.image_size
        pixels = to_pixels([render(s, size) for s in scenes], size)
        # question-major order, so row blocks line up with the images: [q0 of all images, q1 of all, ...]
        weights = dict(self.config.family_weights) or None
        questions = [
            _three_word_position(s, rng) if k == 0 and hard[i] else ask_any(s, rng, weights=weights)
            for k in range(self.config.questions_per_image)
            for i, s in enumerate(scenes)
        ]
        bos, eos, sep = self.ids[BOS], self.ids[EOS], self.ids[SEP]
        rows, loss_from = [], []
        for scene in scenes:
            rows.append([bos, *self._encode(scene.caption), eos])
            loss_from.append(1)
        for q in questions:
            prompt = [bos, *self._encode(q.text), sep]
            with_scratchpad = q.scratchpad and q.family in self.config.scratchpad
            scratchpad = [*self._encode(q.scratchpad), sep] if with_scratchpad else []
            rows.append([*prompt, *scratchpad, *self._encode(q.answer), eos])
            loss_from.append(len(prompt))
        T = max(len(r) for r in rows)
        seq = torch.full((len(rows), T), self.ids[PAD], dtype=torch.long)
        weight = torch.zeros(len(rows), T - 1)
        for i, (row, start) in enumerate(zip(rows, loss_from, strict=True)):
            seq[i, : len(row)] = torch.tensor(row)
            weight[i, start - 1 : len(row) - 1] = 1.0  # targets seq[:, 1:] from the first answer token
        return {"pixels": pixels, "seq": seq, "weight": weight, "captions": [s.caption for s in scenes]}

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids


def _with_three_word_reference(seed: int, rng: random.Random) -> Scene:
    """A training scene, from `seed` on, in which a position question can name an object by size, colour and
    shape (two objects differ only in size): such questions are rare among random scenes (see
    `TrainConfig.hard_position_share`)."""
    while True:
        scene = make_scene(seed)
        if any((q := ask(scene, "position", rng)) and q.names_three_words for _ in range(12)):
            return scene
        seed = (seed + 7_919) % HELD_OUT_SEED_START  # training seeds stay below the held-out range


def _three_word_position(scene: Scene, rng: random.Random) -> Question:
    """A position question about `scene` that names an object in three words (the scene allows one)."""
    while True:
        question = ask(scene, "position", rng)
        if question is not None and question.names_three_words:
            return question


def token_id(tokenizer: Tokenizer, token: str) -> int:
    id_ = tokenizer.token_to_id(token)
    if id_ is None:
        raise ValueError(f"the tokenizer has no {token} token")
    return id_


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch with its tensors on `device`."""
    return {
        "pixels": batch["pixels"].to(device),
        "seq": batch["seq"].to(device),
        "weight": batch["weight"].to(device),
        "captions": batch["captions"],
    }
