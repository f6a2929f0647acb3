"""Batched greedy decoding with a KV cache, left-padded prompts and per-row end of sequence.

Rows of a batch never see one another: prompts are left-padded and padded keys are masked, so each row
computes what it would compute alone (up to float rounding), and a finished row only waits for the
others. Each row has its own limit on new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.decoder import Decoder, causal_mask


@torch.inference_mode()
def greedy_decode(
    decoder: Decoder,
    image_tokens: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    eos_id: int,
    pad_id: int,
    use_cache: bool = True,
) -> list[list[int]]:
    """Generate up to `max_new_tokens[i]` tokens after `prompts[i]`; returns the new ids, without EOS."""
    B = len(prompts)
    if B == 0:
        return []
    device = image_tokens.device
    L = max(len(p) for p in prompts)
    room = decoder.config.max_len
    limits = [max(0, min(n, room - len(p))) for p, n in zip(prompts, max_new_tokens, strict=True)]
    ids = torch.full((B, L), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(B, L, dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        ids[i, L - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        valid[i, L - len(prompt) :] = True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, L): each prompt starts at position 0
    outputs: list[list[int]] = [[] for _ in range(B)]
    done = torch.tensor([n == 0 for n in limits], device=device)
    limit = torch.tensor(limits, device=device)
    cache = decoder.new_cache() if use_cache else None

    logits = decoder(ids, positions, causal_mask(valid), image_tokens, cache)[:, -1]  # (B, V)
    for step in range(max(limits)):
        next_ids = logits.argmax(-1)  # (B,)
        finished = done | (next_ids == eos_id)
        for i in (~finished).nonzero().flatten().tolist():
            outputs[i].append(int(next_ids[i]))
        done = finished | (limit <= step + 1)
        if bool(done.all()):
            break
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        last = (positions[:, -1:] + 1).clamp(max=decoder.config.max_len - 1)  # finished rows may run past
        positions = torch.cat([positions, last], dim=1)
        valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        if cache is not None:  # feed only the new token; its keys see every valid one before it
            logits = decoder(ids[:, -1:], positions[:, -1:], valid[:, None, None, :], image_tokens, cache)
        else:
            logits = decoder(ids, positions, causal_mask(valid), image_tokens)
        logits = logits[:, -1]
    return outputs
