"""Equivalence tests for decoding: KV cache vs none, batched vs one by one."""

import pytest
import torch

from model.config import PRESETS, ModelConfig
from model.generate import greedy_decode
from model.multimodal import MultimodalTransformer
from model.scenes import make_scene, render

VARIANTS = {"plain": PRESETS["tiny"]}


@pytest.fixture(params=sorted(VARIANTS))
def config(request: pytest.FixtureRequest) -> ModelConfig:
    return VARIANTS[request.param]


def _random_module(config: ModelConfig, seed: int = 0) -> MultimodalTransformer:
    torch.manual_seed(seed)
    module = MultimodalTransformer(config).eval()
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return module


def _image_tokens(module: MultimodalTransformer, n: int) -> torch.Tensor:
    from model.images import to_pixels

    pixels = to_pixels([render(make_scene(i)) for i in range(n)], module.config.vision.image_size)
    return module.encode_image(pixels)[1]


def test_kv_cache_equals_no_cache(config: ModelConfig) -> None:
    module = _random_module(config)
    tokens = _image_tokens(module, 3)
    prompts = [[2], [2, 10, 11, 4], [2, 7, 4]]
    with_cache = greedy_decode(module.decoder, tokens, prompts, [12, 12, 12], eos_id=3, pad_id=0)
    without = greedy_decode(module.decoder, tokens, prompts, [12, 12, 12], eos_id=3, pad_id=0, use_cache=False)
    assert with_cache == without
    assert any(len(o) > 3 for o in with_cache)  # the comparison covers several cached steps


def test_cached_logits_match_full_forward(config: ModelConfig) -> None:
    from model.decoder import causal_mask

    module = _random_module(config, 1)
    tokens = _image_tokens(module, 2)
    ids = torch.tensor([[2, 9, 10, 11, 12], [2, 5, 6, 7, 8]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    positions = torch.arange(5).expand(2, 5)
    full = module.decoder(ids, positions, causal_mask(valid), tokens)
    cache = module.decoder.new_cache()
    steps = [module.decoder(ids[:, :2], positions[:, :2], causal_mask(valid[:, :2]), tokens, cache)]
    for t in range(2, 5):
        steps.append(
            module.decoder(ids[:, t : t + 1], positions[:, t : t + 1], valid[:, None, None, : t + 1], tokens, cache)
        )
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_batched_equals_single_with_mixed_prompts_and_limits(config: ModelConfig) -> None:
    module = _random_module(config, 2)
    tokens = _image_tokens(module, 5)
    prompts = [[2], [2, 10, 11, 12, 13, 14, 4], [2, 7, 4], [2], [2, 30, 31, 4]]
    limits = [9, 3, 14, 1, 6]
    batched = greedy_decode(module.decoder, tokens, prompts, limits, eos_id=3, pad_id=0)
    single = [
        greedy_decode(module.decoder, tokens[i : i + 1], [p], [n], eos_id=3, pad_id=0)[0]
        for i, (p, n) in enumerate(zip(prompts, limits, strict=True))
    ]
    assert batched == single
    assert all(len(o) <= n for o, n in zip(batched, limits, strict=True))
    assert len({tuple(o) for o in batched}) > 1  # outputs depend on the input


def test_per_row_end_of_sequence(config: ModelConfig) -> None:
    module = _random_module(config, 3)
    tokens = _image_tokens(module, 4)
    prompts = [[2], [2, 8, 4], [2, 20, 4], [2, 40, 4]]
    free = greedy_decode(module.decoder, tokens, prompts, [10] * 4, eos_id=-1, pad_id=0)
    # an "end" token that one row produces and another never does
    eos, early, late = next(
        (t, i, j) for i in range(4) for j in range(4) for t in free[i] if i != j and t not in free[j]
    )
    stopped = greedy_decode(module.decoder, tokens, prompts, [10] * 4, eos_id=eos, pad_id=0)
    assert stopped[early] == free[early][: free[early].index(eos)]
    assert stopped[late] == free[late]


def test_empty_batch(config: ModelConfig) -> None:
    module = _random_module(config)
    assert greedy_decode(module.decoder, torch.zeros(0, 17, 32), [], [], eos_id=3, pad_id=0) == []
