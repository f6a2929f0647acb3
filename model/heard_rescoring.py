"""A heard question chosen among its neighbours by how well each fits the audio: joint CTC/attention rescoring.

The built-in decoder hears with a strong prior for the sentences it was trained on: a question whose phrase no
training sentence has ("what shape is the orange one?") is heard as a trained neighbour ("... the green
one?"), and an accent it never heard can turn a question into another one ("what colour is the circle?" heard
as "how many shapes are there?"). Hybrid CTC/attention recognisers (Watanabe et al., 2017) score a hypothesis
by the attention decoder and by a CTC head over the audio tokens, which has no sentence prior. Here the
candidates of a heard question are the question itself, every question with one scene word of it swapped for
another of its kind (a colour, shape, size or plural shape), and the grammar's short questions (count, colour,
shape, existence: 35). Each is scored by CTC; the `SHORTLIST` best and the heard one by `CTC_WEIGHT` × CTC +
(1 - `CTC_WEIGHT`) × attention log-likelihood of the audio, and the best is the question answered.

The CTC head is a linear layer over the shipped audio tower's tokens, trained with the tower frozen
(`python -m model.train.ctc_head`), and stored beside the weights (`ctc_head.safetensors`); a checkpoint
without one answers the question as heard. Only spoken questions are rescored (a transcript is what was heard),
and a transcript's confidence (`avg_logprob`) and the refusal criteria stay the greedy decode's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.decoder import Decoder
from model.layers import BlockCache, KVCache
from model.questions import COLOURS, SHAPES, SIZES

# chosen on tuning clips apart from the evaluation's (`python -m bench.ctc_rescore`: the most tuning questions
# right, a tie going to the lower weight; model/MODEL_CARD.md)
CTC_WEIGHT = 0.9
# the decoder scores only the candidates CTC ranks best (and the one heard): its pass over all of them (35 to 60
# rows) took 28-76 ms on one CPU thread, inside the step loop; over 9, about a quarter of that
SHORTLIST = 8
HEAD_FILE = "ctc_head.safetensors"

_KINDS = (SHAPES, COLOURS, SIZES, tuple(s + "s" for s in SHAPES))
SHORT_QUESTIONS = (
    "how many shapes are there?",
    *(f"what colour is the {s}?" for s in SHAPES),
    *(f"what shape is the {c} one?" for c in COLOURS),
    *(f"is there a {c} {s}?" for c in COLOURS for s in SHAPES),
)


def neighbours(text: str) -> list[str]:
    """`text` and every text with one scene word swapped for another of its kind."""
    words = text.split()
    found = {text}
    for i, word in enumerate(words):
        core = word.rstrip("?,")
        for kind in _KINDS:
            if core in kind:
                found |= {" ".join([*words[:i], word.replace(core, other), *words[i + 1 :]]) for other in kind}
    return sorted(found)


def candidates(text: str) -> list[str]:
    """What a heard question may have been: its neighbours and the grammar's short questions."""
    return sorted(set(neighbours(text)) | set(SHORT_QUESTIONS))


def _padded(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded (R, T), and which of their T - 1 predictions are real (R, T - 1)."""
    seq = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), seq.shape[1] - 1, device=device)
    for r, row in enumerate(rows):
        seq[r, : len(row)] = torch.tensor(row)
        valid[r, : len(row) - 1] = 1
    return seq, valid


@torch.inference_mode()
def ctc_scores(head: torch.nn.Linear, tokens: torch.Tensor, rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """The CTC log-likelihood of each token row ([BOS] ... [EOS]: both left out) given one audio's tower tokens
    (n, d); the blank is the head's last class."""
    seq, _ = _padded(rows, tokens.device)
    log_probs = F.log_softmax(head(tokens).float(), -1)[:, None].expand(-1, len(rows), -1)  # (N, R, V + 1)
    return -F.ctc_loss(
        log_probs,
        seq[:, 1:-1],
        torch.full((len(rows),), tokens.shape[0], dtype=torch.long),
        torch.tensor([len(r) - 2 for r in rows]),
        blank=log_probs.shape[-1] - 1,
        reduction="none",
        zero_infinity=True,
    )


@torch.inference_mode()
def attention_scores(
    decoder: Decoder,
    tokens: torch.Tensor,
    rows: Sequence[Sequence[int]],
    cross_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """The decoder's log-likelihood of each token row ([BOS] ... [EOS]) given one audio's tower tokens (n, d).
    `cross_kv`: the audio's cross-attention keys and values, each block's (nh, n, hs) (its `ImageEncoding`'s),
    read instead of projecting the tokens again for every row."""
    n = len(rows)
    seq, valid = _padded(rows, tokens.device)
    inputs = seq[:, :-1]
    steps = inputs.shape[1]
    positions = torch.arange(steps, device=tokens.device).expand_as(inputs)
    causal = torch.ones(steps, steps, dtype=torch.bool, device=tokens.device).tril()[None, None]
    if cross_kv is None:
        logits = decoder(inputs, positions, causal, tokens[None].expand(n, -1, -1))
    else:  # each block's cross-attention reads the audio's keys and values, shared by the rows
        cache = [
            BlockCache(KVCache(), KVCache(k[None].expand(n, -1, -1, -1), v[None].expand(n, -1, -1, -1)))
            for k, v in cross_kv
        ]
        logits = decoder(inputs, positions, causal, tokens[None], cache=cache)
    return -(F.cross_entropy(logits.float().transpose(1, 2), seq[:, 1:], reduction="none") * valid).sum(1)


def shortlist(ctc: torch.Tensor, heard: int, keep: int = SHORTLIST) -> list[int]:
    """The candidates the decoder scores: the `keep` best by CTC, and the one heard (index `heard`)."""
    best = torch.topk(ctc, min(keep, len(ctc))).indices.tolist()
    return sorted({*best, heard})


def choose(ctc: torch.Tensor, attention: torch.Tensor, weight: float) -> int:
    """The index of the best `weight` × CTC + (1 - `weight`) × attention."""
    return int((weight * ctc + (1 - weight) * attention).argmax())
