"""The Whisper adapter against transformers itself: greedy tokens, batches, languages, the window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from model.api import AudioSpec, MultimodalModel, UnsupportedTask
from model.hf import load_hf_model
from model.hf.whisper import WhisperTranscriber
from tests.support.hf_checkpoints import WHISPER_LANGUAGES, WHISPER_WINDOW_S, sample_audio

CLIPS = sample_audio(5)


@pytest.fixture(scope="session")
def whisper_dir(tiny_whisper_dir: Path) -> Path:
    return tiny_whisper_dir


@pytest.fixture(scope="module")
def whisper(whisper_dir: Path) -> WhisperTranscriber:
    model = load_hf_model(str(whisper_dir))
    assert isinstance(model, WhisperTranscriber)
    return model


@pytest.fixture(scope="module")
def reference(whisper_dir: Path):
    """transformers' own greedy Whisper generate for one clip, cut at its end of text."""
    processor = AutoProcessor.from_pretrained(whisper_dir)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    eos = model.generation_config.eos_token_id

    @torch.inference_mode()
    def tokens(clip: np.ndarray, language: str | None) -> list[int]:
        features = processor(clip, sampling_rate=16_000, return_tensors="pt").input_features
        out = model.generate(features, language=language, task="transcribe", do_sample=False)[0].tolist()
        return out[: out.index(eos)] if eos in out else out

    return tokens


def test_contract(whisper: WhisperTranscriber) -> None:
    assert isinstance(whisper, MultimodalModel)
    assert whisper.tasks == {"transcribe"}
    assert whisper.audio == AudioSpec(16_000, float(WHISPER_WINDOW_S), frozenset(WHISPER_LANGUAGES))
    assert whisper.transcribe([]) == []
    with pytest.raises(UnsupportedTask, match="cannot do 'caption'"):
        whisper.caption([])


@pytest.mark.parametrize("language", [None, "en", "fr"])
def test_tokens_equal_transformers(whisper: WhisperTranscriber, reference, language: str | None) -> None:
    expected = [reference(clip, language) for clip in CLIPS]
    assert len({tuple(t) for t in expected}) > 1  # the tiny model's output depends on the audio
    assert whisper.token_ids(CLIPS, language) == expected  # one batch (detection per row when None)
    texts = whisper.transcribe(CLIPS, language)
    assert texts == [whisper.processor.decode(t, skip_special_tokens=True).strip() for t in expected]


def test_batch_of_mixed_languages_equals_single_calls(whisper: WhisperTranscriber) -> None:
    languages = ["fr", None, "de", "fr", "en"]
    prepared = [whisper.prepare_audio(clip) for clip in CLIPS]
    batched = whisper.transcribe(prepared, languages)
    assert batched == [whisper.transcribe([clip], lang)[0] for clip, lang in zip(CLIPS, languages, strict=True)]
    assert whisper.transcribe(CLIPS, languages) == batched  # raw audio or prepared features: the same


def test_audio_longer_than_the_window_is_refused(whisper: WhisperTranscriber) -> None:
    too_long = np.zeros(16_000 * WHISPER_WINDOW_S + 1, dtype=np.float32)
    with pytest.raises(ValueError, match=f"window is {WHISPER_WINDOW_S} s"):
        whisper.prepare_audio(too_long)
    exactly = np.zeros(16_000 * WHISPER_WINDOW_S, dtype=np.float32)
    assert whisper.prepare_audio(exactly).shape[-1] == WHISPER_WINDOW_S * 100  # 10 ms mel frames


def test_transcription_reports_every_decoding_step(whisper: WhisperTranscriber) -> None:
    steps: list[int] = []
    tokens = whisper.token_ids(CLIPS[:2], "en", progress=lambda: steps.append(1))
    assert tokens == whisper.token_ids(CLIPS[:2], "en")
    assert len(steps) >= max(len(row) for row in tokens) >= 1  # one call per step (the prompt's tokens are not)


def test_avg_logprob_equals_transformers_scores(whisper: WhisperTranscriber, whisper_dir: Path) -> None:
    """`transcribe_scored` (a batch, one gather per step) against transformers' own `output_scores` for each clip
    alone: the mean log-probability of its tokens and its end of text, and the same text as `transcribe`."""
    processor = AutoProcessor.from_pretrained(whisper_dir)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    eos = model.generation_config.eos_token_id
    updates = whisper.transcribe_scored(CLIPS, "en")
    assert [u.text for u in updates] == whisper.transcribe(CLIPS, "en")
    for clip, update in zip(CLIPS, updates, strict=True):
        features = processor(clip, sampling_rate=16_000, return_tensors="pt").input_features
        with torch.inference_mode():
            out = model.generate(
                features, language="en", task="transcribe", do_sample=False, output_scores=True,
                return_dict_in_generate=True,
            )  # fmt: skip
        steps = torch.stack(out.scores).log_softmax(-1)[:, 0]  # (S, V): each step's log-probabilities
        chosen = steps.max(-1)  # greedy: the chosen token is the best one
        ids = chosen.indices.tolist()
        n = ids.index(eos) + 1 if eos in ids else len(ids)
        assert update.avg_logprob is not None
        assert update.avg_logprob == pytest.approx(float(chosen.values[:n].mean()), abs=1e-4)
