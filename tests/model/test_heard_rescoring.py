"""Joint CTC/attention rescoring of heard questions (`model.heard_rescoring`), on a tiny random checkpoint with
an audio tower and a random CTC head saved beside it: the candidates, the scores against independent
computations of each part, and the model choosing the best-scoring candidate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import load_builtin, save_ctc_head
from model.heard_rescoring import (
    CTC_WEIGHT,
    HEAD_FILE,
    SHORT_QUESTIONS,
    SHORTLIST,
    attention_scores,
    candidates,
    choose,
    ctc_scores,
    neighbours,
    shortlist,
)
from model.multimodal import BuiltinModel
from model.train.objective import token_losses


def test_neighbours_swap_one_scene_word_for_another_of_its_kind() -> None:
    found = neighbours("what shape is the green one?")
    assert "what shape is the orange one?" in found and "what shape is the green one?" in found
    assert len(found) == 6  # the six colours, the heard one among them
    position = neighbours("is the small red circle left of the squares?")
    assert "is the large red circle left of the squares?" in position
    assert "is the small red circle left of the diamonds?" in position
    assert "is the small blue circle left of the squares?" in position
    assert all(len(t.split()) == 9 for t in position)  # one word swapped, never added or dropped
    assert neighbours("how many shapes are there?") == ["how many shapes are there?"]


def test_candidates_add_the_grammars_short_questions() -> None:
    assert len(SHORT_QUESTIONS) == 1 + 4 + 6 + 24
    found = candidates("is the triangle left of the circle?")
    assert set(SHORT_QUESTIONS) <= set(found)
    assert "is the triangle left of the square?" in found
    assert len(found) == len(set(found))


@pytest.fixture(scope="module")
def heard_dir(tiny_audio_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny audio checkpoint with a random CTC head beside it."""
    folder = tmp_path_factory.mktemp("with-head") / "checkpoint"
    shutil.copytree(tiny_audio_checkpoint_dir, folder)
    model = load_builtin(folder)
    torch.manual_seed(3)
    head = torch.nn.Linear(model.module.config.vision.dim, model.module.config.decoder.vocab_size + 1)
    save_ctc_head(head, folder / HEAD_FILE)
    return folder


@pytest.fixture(scope="module")
def model(heard_dir: Path, text_tower) -> BuiltinModel:  # type: ignore[no-untyped-def]
    return load_builtin(heard_dir, text_tower=text_tower)


def _clip(seed: int, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * (150 + 90 * seed) * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


def test_the_head_is_loaded_from_beside_the_weights(
    model: BuiltinModel, heard_dir: Path, tiny_audio_checkpoint_dir: Path, text_tower
) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    assert model.ctc_head is not None
    saved = load_file(str(heard_dir / HEAD_FILE))
    assert torch.equal(model.ctc_head.weight.detach(), saved["weight"])
    [encoding] = model.encode_audios([_clip(0)])
    assert encoding.tokens is not None and encoding.tokens.shape[0] == encoding.cross_kv[0][0].shape[1]
    plain = load_builtin(tiny_audio_checkpoint_dir, text_tower=text_tower)
    assert plain.ctc_head is None
    [encoding] = plain.encode_audios([_clip(0)])
    assert encoding.tokens is None  # nothing kept that nothing reads


def test_the_scores_are_the_decoders_and_ctcs_log_likelihoods(model: BuiltinModel) -> None:
    """Against independent computations: the training objective's teacher forcing (the audio tokens projected
    for each row), and CTC over the head's log-probabilities for each row alone."""
    assert model.ctc_head is not None
    texts = ["how many shapes are there?", "what colour is the circle?", "is the red square left of the circle?"]
    rows = model.transcript_rows(texts)
    [encoding] = model.encode_audios([_clip(1)])
    tokens = encoding.tokens
    assert tokens is not None
    attention = attention_scores(model.module.decoder, tokens, rows, encoding.cross_kv)
    assert torch.allclose(attention, attention_scores(model.module.decoder, tokens, rows), atol=1e-4)
    ctc = ctc_scores(model.ctc_head, tokens, rows)
    with torch.inference_mode():
        for r, row in enumerate(rows):
            seq = torch.tensor([row])
            expected = -token_losses(model.module, tokens[None], seq).sum()
            assert attention[r].item() == pytest.approx(expected.item(), abs=1e-3)
            log_probs = F.log_softmax(model.ctc_head(tokens), -1)[:, None]
            blank = log_probs.shape[-1] - 1
            alone = -F.ctc_loss(
                log_probs, seq[:, 1:-1], [tokens.shape[0]], [len(row) - 2], blank=blank, reduction="sum"
            )
            assert ctc[r].item() == pytest.approx(alone.item(), abs=1e-3)


def test_the_shortlist_is_the_best_by_ctc_and_the_one_heard() -> None:
    ctc = torch.tensor([-5.0, -1.0, -9.0, -2.0, -3.0])
    assert shortlist(ctc, heard=2, keep=2) == [1, 2, 3]
    assert shortlist(ctc, heard=1, keep=2) == [1, 3]
    assert shortlist(ctc, heard=0, keep=10) == [0, 1, 2, 3, 4]
    attention = torch.tensor([0.0, -10.0, -1.0, -4.0, -1.0])
    assert choose(ctc, attention, 0.0) == 0 and choose(ctc, attention, 1.0) == 1
    assert choose(ctc, attention, 0.5) == 4  # -2.0: the best of both together, the best of neither alone


def test_a_heard_question_becomes_its_best_scoring_candidate(model: BuiltinModel) -> None:
    assert model.ctc_head is not None
    heard = ["what shape is the green one?", "", "is there a red square?"]
    encodings = model.encode_audios([_clip(2), _clip(3), _clip(4)])
    chosen = model.rescore_heard(encodings, heard)
    assert chosen[1] == ""  # nothing heard stays nothing (refused, never invented)
    for i in (0, 2):
        options = candidates(heard[i])
        rows = model.transcript_rows(options)
        tokens = encodings[i].tokens
        assert tokens is not None
        ctc = ctc_scores(model.ctc_head, tokens, rows)
        attention = attention_scores(model.module.decoder, tokens, rows)
        kept = shortlist(ctc, options.index(heard[i]))
        assert len(kept) <= SHORTLIST + 1
        assert chosen[i] == options[kept[choose(ctc[kept], attention[kept], CTC_WEIGHT)]]


def test_without_a_head_a_question_is_answered_as_heard(tiny_audio_checkpoint_dir: Path, text_tower) -> None:  # type: ignore[no-untyped-def]
    plain = load_builtin(tiny_audio_checkpoint_dir, text_tower=text_tower)
    heard = ["what shape is the green one?"]
    assert plain.rescore_heard(plain.encode_audios([_clip(5)]), heard) == heard


def test_the_shipped_weights_rescore_with_their_own_head() -> None:
    model = load_builtin()
    assert model.ctc_head is not None
    assert model.ctc_head.out_features == model.module.config.decoder.vocab_size + 1


def test_a_transcript_row_is_its_ids_between_bos_and_eos(model: BuiltinModel) -> None:
    [row] = model.transcript_rows(["how many shapes are there?"])
    ids = model.tokenizer.encode("how many shapes are there?", add_special_tokens=False).ids
    assert row == [model.tokenizer.token_to_id("[BOS]"), *ids, model.tokenizer.token_to_id("[EOS]")]
