"""The built-in model's audio tower on a tiny random `tiny+audio` checkpoint.

Transcripts in a batch equal each audio alone and the reference (`greedy_decode` over the audio's tokens
with their validity as `context_mask`), for audios of odd and even frame counts; a `DecodeState` with a
masked context lets rows join and leave and still equals the reference; checkpoints with and without the
tower load strictly and say what they can do; bad calls are refused.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch

from model import load_model
from model.api import UNDERSTANDING_TASKS
from model.checkpoint import load_builtin, load_module, save_checkpoint
from model.generate import DecodeState, greedy_decode
from model.loops import until_loop
from model.multimodal import BuiltinModel
from model.step_graphs import DecodeOptions
from model.tokenizer import BOS, EOS, PAD, SEP
from tests.support.audio import speech
from tests.support.server import noise_image

SENTENCES = [
    "a red circle",
    "two blue squares below a green triangle",
    "what colour is the circle?",
    "is there a small yellow square left of the triangle?",
    "three",
]


@pytest.fixture(scope="module")
def hearing(tiny_audio_checkpoint_dir: Path, text_tower) -> BuiltinModel:  # type: ignore[no-untyped-def]
    return load_builtin(tiny_audio_checkpoint_dir, "cpu", text_tower=text_tower)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Speech at 16 kHz, cut so that the log-mel frame counts are both odd and even."""
    audios = [soxr.resample(*speech(s), 16_000).astype(np.float32) for s in SENTENCES]
    return [a[: len(a) - 160 * k] for k, a in enumerate(audios)]  # drop k frames' worth of samples


def _ids(model: BuiltinModel) -> dict[str, int]:
    return {token: model.tokenizer.token_to_id(token) for token in (BOS, EOS, PAD, SEP)}


def _reference(model: BuiltinModel, audios: list[np.ndarray]) -> list[str]:
    """Greedy decoding of each audio after [BOS], from the audio tower's tokens and their validity mask."""
    features = [model.prepare_audio(a) for a in audios]
    lengths = torch.tensor([f.shape[0] for f in features])
    batch = torch.zeros(len(features), int(lengths.max()), features[0].shape[1])
    for i, f in enumerate(features):
        batch[i, : f.shape[0]] = f
    with torch.inference_mode():
        tokens, valid = model.module.encode_audio(batch, lengths)
    ids = _ids(model)
    generated = greedy_decode(
        model.module.decoder,
        tokens,
        [[ids[BOS]]] * len(audios),
        [model.transcript_tokens(f) for f in features],  # the bound from each audio's duration
        eos_id=ids[EOS],
        pad_id=ids[PAD],
        context_mask=valid,
    )
    return [model.tokenizer.decode(until_loop(g)).strip() for g in generated]  # and it stops at a loop


def test_the_clips_have_odd_and_even_frame_counts(hearing: BuiltinModel, clips: list[np.ndarray]) -> None:
    frames = {hearing.prepare_audio(a).shape[0] % 2 for a in clips}
    assert frames == {0, 1}


def test_tasks_and_audio_spec(hearing: BuiltinModel) -> None:
    assert hearing.tasks == UNDERSTANDING_TASKS
    assert hearing.audio is not None
    assert (hearing.audio.sampling_rate, hearing.audio.max_seconds) == (16_000, 10.0)
    assert hearing.audio.languages == frozenset({"en"})


def test_batched_equals_alone_equals_the_reference(hearing: BuiltinModel, clips: list[np.ndarray]) -> None:
    batched = hearing.transcribe(clips)
    alone = [hearing.transcribe([a])[0] for a in clips]
    assert batched == alone
    assert batched == _reference(hearing, clips)  # in one padded batch: the masks do their work
    assert alone == [_reference(hearing, [a])[0] for a in clips]
    assert len(set(batched)) > 1  # the transcript depends on the audio (else the equalities prove nothing)
    assert all(batched)


def test_prepared_features_equal_raw_samples(hearing: BuiltinModel, clips: list[np.ndarray]) -> None:
    prepared = [hearing.prepare_audio(a) for a in clips[:3]]
    assert hearing.transcribe(prepared, "en") == hearing.transcribe(clips[:3], [None, "en", None])


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_rows_join_and_leave_a_masked_state(hearing: BuiltinModel, clips: list[np.ndarray], fixed_shapes: bool) -> None:
    """Audios arrive between steps into a state sized for the longest audio the model takes; rows finish,
    are cancelled or are filtered out; every finished one equals its reference (with a step of fixed shapes
    too: all the context slots attended, masked)."""
    rng = random.Random(0)
    audios = clips * 2
    expected = _reference(hearing, clips) * 2
    encodings = hearing.encode_audios(audios)
    ids = _ids(hearing)
    assert hearing.config.audio is not None
    state = DecodeState(
        hearing.module.decoder,
        3,
        hearing.config.audio.max_tokens,
        ids[EOS],
        ids[PAD],
        ids[SEP],
        detokenize=lambda t: hearing.tokenizer.decode(t).strip(),
        masked_context=True,
        options=DecodeOptions(fixed_shapes=fixed_shapes),
    )
    specs = [hearing.sequence("transcribe", None, hearing.transcript_tokens(a)) for a in audios]  # as served
    waiting, rows, texts, cancelled, steps = list(range(len(audios))), [], {}, set(), 0
    while waiting or rows:
        if rows and rng.random() < 0.08:  # a client leaves: its row goes, the others move down
            gone = rng.randrange(len(rows))
            cancelled.add(rows.pop(gone))
            state.filter([r for r in range(len(rows) + 1) if r != gone])
        joining = waiting[: rng.randrange(0, state.free + 1)]
        waiting = waiting[len(joining) :]
        if joining:
            updates = [None] * len(rows) + state.prefill([specs[i] for i in joining], [encodings[i] for i in joining])
            rows += joining
        else:
            updates = state.step() if rows else []
            steps += bool(rows)
        keep = []
        for r, update in enumerate(updates):
            if update is not None and update.finished:
                texts[rows[r]] = update.text
            else:
                keep.append(r)
        state.filter(keep)
        rows = [rows[r] for r in keep]
    assert steps > 20 and len(texts) >= len(audios) - len(cancelled) > 0
    for i, text in texts.items():
        assert text == expected[i], f"audio {i}"


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_transcripts_join_captions_in_one_state(
    hearing: BuiltinModel, clips: list[np.ndarray], fixed_shapes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving state of a model that hears: captions decode, transcripts join mid-way (their context
    slots grow for the longest), more captions join after; every transcript equals it alone, every caption
    equals it alone (unchanged by the audio rows next to it), and streamed deltas add up to each text; with
    a step of fixed shapes per bucket too."""
    images = [noise_image(seed) for seed in range(4)]
    limits = [12, 40, 6, 30]
    captions = [hearing.caption([image], n)[0] for image, n in zip(images, limits, strict=True)]
    transcripts = [hearing.transcribe([clip])[0] for clip in clips[:3]]
    monkeypatch.setattr(hearing, "decode_options", DecodeOptions(fixed_shapes=fixed_shapes))
    state = hearing.new_state(7)
    image_encodings = hearing.encode_images([hearing.prepare_image(image) for image in images])
    audio_encodings = hearing.encode_audios(clips[:3])
    caption_specs = [hearing.sequence("caption", None, n) for n in limits]
    transcript_spec = hearing.sequence("transcribe", None, hearing.config.decoder.max_len - 1)
    joins = {  # step → what joins before it: (kind, index)
        0: [("caption", 0), ("caption", 1)],
        3: [("transcript", 0)],
        5: [("transcript", 1), ("caption", 2)],
        9: [("transcript", 2), ("caption", 3)],
    }
    rows: list[tuple[str, int]] = []
    texts: dict[tuple[str, int], str] = {}
    shown: dict[tuple[str, int], str] = {}
    step = 0
    while rows or any(at >= step for at in joins):
        updates: list = [None] * len(rows)  # type: ignore[type-arg]
        joining = joins.get(step, [])
        if joining:
            specs = [caption_specs[i] if kind == "caption" else transcript_spec for kind, i in joining]
            contexts = [image_encodings[i] if kind == "caption" else audio_encodings[i] for kind, i in joining]
            updates += state.prefill(specs, contexts)
            rows += joining
        elif rows:
            updates = state.step()
        step += 1
        keep = []
        for r, update in enumerate(updates):
            if update is None:
                keep.append(r)
                continue
            shown[rows[r]] = shown.get(rows[r], "") + update.delta
            if update.finished:
                texts[rows[r]] = update.text
            else:
                keep.append(r)
        state.filter(keep)
        rows = [rows[r] for r in keep]
    assert state._context_len >= max(e.cross_kv[0][0].shape[1] for e in audio_encodings)  # grew for the audio
    assert [texts[("caption", i)] for i in range(4)] == captions
    assert [texts[("transcript", i)] for i in range(3)] == transcripts
    assert all(shown[key] == text for key, text in texts.items())
    assert any(transcripts) and any(captions)


def test_a_checkpoint_with_the_tower_saves_and_loads_strictly(
    hearing: BuiltinModel,
    clips: list[np.ndarray],
    tmp_path: Path,
    text_tower,  # type: ignore[no-untyped-def]
) -> None:
    save_checkpoint(hearing.module, hearing.tokenizer, tmp_path, name="resaved")
    module, _, name = load_module(tmp_path)  # strict: every key present, none extra
    assert name == "resaved" and module.config == hearing.config and module.audio is not None
    reloaded = load_builtin(tmp_path, "cpu", text_tower=text_tower)
    assert reloaded.tasks == UNDERSTANDING_TASKS
    assert reloaded.transcribe(clips[:2]) == hearing.transcribe(clips[:2])


def test_a_checkpoint_missing_tower_weights_is_refused(
    tiny_audio_checkpoint_dir: Path, tiny_checkpoint_dir: Path, tmp_path: Path
) -> None:
    """A config that promises a tower with weights that lack it fails to load (strict), not silently random."""
    shutil.copytree(tiny_checkpoint_dir, tmp_path, dirs_exist_ok=True)
    audio_config = json.loads((tiny_audio_checkpoint_dir / "config.json").read_text())["model"]["audio"]
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["audio"] = audio_config
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="audio"):
        load_module(tmp_path)


def test_an_old_checkpoint_without_audio_loads_and_cannot_transcribe(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    """A checkpoint written before the tower existed: no `audio` key in its config at all."""
    shutil.copytree(tiny_checkpoint_dir, tmp_path, dirs_exist_ok=True)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"].pop("audio", None)
    (tmp_path / "config.json").write_text(json.dumps(meta))
    model = load_model(str(tmp_path), "cpu")
    assert "transcribe" not in model.tasks and model.tasks == UNDERSTANDING_TASKS - {"transcribe"}
    assert model.audio is None


def test_unknown_languages_are_refused(hearing: BuiltinModel, clips: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="'fr'"):
        hearing.transcribe(clips[:1], "fr")
    with pytest.raises(ValueError, match="'de'"):
        hearing.transcribe(clips[:2], ["en", "de"])
    assert hearing.transcribe(clips[:1], "en") == hearing.transcribe(clips[:1])


def test_an_empty_list_gives_an_empty_list(hearing: BuiltinModel) -> None:
    assert hearing.transcribe([]) == []
    assert hearing.transcribe([], "en") == []


def test_audio_shorter_than_a_window_is_transcribed(hearing: BuiltinModel) -> None:
    """Under 401 samples (25 ms) the STFT's reflection padding had nothing to reflect: it raised."""
    for n in (1, 150, 400):
        features = hearing.prepare_audio(np.full(n, 0.3, np.float32))
        assert features.shape == (2, 80)  # two 10 ms frames: the samples padded to one window and a sample
        assert len(hearing.transcribe([np.full(n, 0.3, np.float32)])) == 1
