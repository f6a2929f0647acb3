"""Whisper: speech to text (`WhisperForConditionalGeneration` with its `WhisperProcessor`).

`prepare_audio` computes the log-mel features with the checkpoint's own feature extractor (off the device
thread); `transcribe` runs transformers' Whisper `generate`, greedy, with the checkpoint's generation
config (its `max_length`, suppressed tokens, no timestamps), in groups of one language: transformers takes
either one language per row or detection for every row, never a mix. Audio longer than the feature
extractor's window (30 s for Whisper) is refused, never chunked: `audio.max_seconds` says so before decoding.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessorList, PreTrainedModel, ProcessorMixin, WhisperForConditionalGeneration

from model.api import AudioSpec, Progress, Update
from model.hf.base import ChosenLogprobs, HFAdapter, cut_rows, eos_token_ids, generate
from model.hf.loading import load_pretrained, load_processor

logger = logging.getLogger(__name__)


class WhisperTranscriber(HFAdapter):
    """Transcribes with a Whisper checkpoint; multilingual ones take a language or detect it."""

    def __init__(self, name: str, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        super().__init__(name, model.device, model.dtype, frozenset({"transcribe"}), max_text_tokens=0)
        self.model = model
        self.processor = processor
        extractor: Any = getattr(processor, "feature_extractor")  # noqa: B009 (ProcessorMixin types no attributes)
        self._extractor = extractor
        generation = model.generation_config
        self.eos_ids = eos_token_ids(generation.eos_token_id)
        self.multilingual = bool(getattr(generation, "is_multilingual", False)) and bool(
            getattr(generation, "lang_to_id", None)
        )
        codes = (token.strip("<|>") for token in getattr(generation, "lang_to_id", None) or {})
        self.audio = AudioSpec(
            sampling_rate=int(extractor.sampling_rate),
            max_seconds=float(extractor.n_samples / extractor.sampling_rate),
            languages=frozenset(codes) if self.multilingual else frozenset({"en"}),
        )

    def prepare_audio(self, audio: np.ndarray) -> torch.Tensor:
        """The log-mel features of one clip, padded to the window: (mel bins, frames) float32 on the CPU."""
        assert self.audio is not None
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (one dimension), got shape {audio.shape}")
        if audio.size > self.audio.sampling_rate * self.audio.max_seconds:
            raise ValueError(
                f"the audio is {audio.size / self.audio.sampling_rate:.1f} s long; "
                f"the model's window is {self.audio.max_seconds:g} s"
            )
        features = self._extractor(audio, sampling_rate=self.audio.sampling_rate, return_tensors="pt")
        prepared: torch.Tensor = features["input_features"][0]
        return prepared

    @torch.inference_mode()
    def transcribe(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[str]:
        """One transcript per clip (raw audio or `prepare_audio`'s features)."""
        return [self._decode(ids) for ids, _ in self._generate(audios, language, progress, scored=False)]

    @torch.inference_mode()
    def transcribe_scored(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[Update]:
        """Each clip's finished update: its transcript and `avg_logprob` (its tokens' and its end token's mean
        log-probability, as Whisper's own decoder computes it: after the suppressing logits processors)."""
        rows = self._generate(audios, language, progress, scored=True)
        return [Update("", True, None, self._decode(ids), len(ids), logprob) for ids, logprob in rows]

    @torch.inference_mode()
    def token_ids(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None = None,
        progress: Progress | None = None,
    ) -> list[list[int]]:
        """The generated tokens of each clip up to its end of text, as `generate` gives them for that clip alone."""
        return [ids for ids, _ in self._generate(audios, language, progress, scored=False)]

    def _generate(
        self,
        audios: Sequence[np.ndarray | Any],
        language: str | Sequence[str | None] | None,
        progress: Progress | None,
        scored: bool,
    ) -> list[tuple[list[int], float | None]]:
        """Each clip's tokens up to its end of text, and their mean log-probability when `scored`."""
        languages = [language] * len(audios) if language is None or isinstance(language, str) else list(language)
        if len(languages) != len(audios):
            raise ValueError(f"got {len(languages)} languages for {len(audios)} audios")
        features = [a if isinstance(a, torch.Tensor) else self.prepare_audio(np.asarray(a)) for a in audios]
        groups: dict[str | None, list[int]] = defaultdict(list)
        for i, code in enumerate(languages):
            groups[code if self.multilingual else None].append(i)
        tokens: list[tuple[list[int], float | None]] = [([], None) for _ in audios]
        for code, rows in groups.items():
            batch = torch.stack([features[i] for i in rows]).to(self.device, self.dtype)
            kwargs: dict[str, Any] = {"language": code, "task": "transcribe"} if self.multilingual else {}
            scores = ChosenLogprobs() if scored else None
            if scores is not None:
                kwargs["logits_processor"] = LogitsProcessorList([scores])
            out = generate(self.model, progress, input_features=batch, do_sample=False, num_beams=1, **kwargs)
            logprobs = scores.averages(self.eos_ids) if scores is not None else [None] * len(rows)
            cut = cut_rows(out, [out.shape[1]] * len(rows), self.eos_ids)
            for i, row, logprob in zip(rows, cut, logprobs, strict=True):
                tokens[i] = (row, logprob)
        return tokens

    def _decode(self, ids: list[int]) -> str:
        text: str = self.processor.decode(ids, skip_special_tokens=True)
        return text.strip()


def load_whisper(name: str, device: torch.device, dtype: torch.dtype) -> WhisperTranscriber:
    """The Whisper adapter: the model and its processor (feature extractor and tokenizer)."""
    processor = load_processor(name)
    model = load_pretrained(WhisperForConditionalGeneration, name, device, dtype)
    return WhisperTranscriber(name, model, processor)
