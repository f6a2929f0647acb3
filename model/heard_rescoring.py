"""A heard question chosen among its neighbours by how well each fits the audio: joint CTC/attention rescoring.

The built-in decoder hears with a strong prior for the sentences it was trained on: a question whose phrase no
training sentence has ("what shape is the orange one?") is heard as a trained neighbour ("... the green
one?"), and an accent it never heard can turn a question into another one ("what colour is the circle?" heard
as "how many shapes are there?"). Hybrid CTC/attention recognisers (Watanabe et al., 2017) score a hypothesis
by the attention decoder and by a CTC head over the audio tokens, which has no sentence prior. Here the
candidates of a heard question are the question itself, every question with one scene word of it swapped for
another of its kind (a colour, shape, size or plural shape), and the grammar's short questions (count, colour,
shape, existence: 35); each is scored `CTC_WEIGHT` × CTC + (1 - `CTC_WEIGHT`) × attention log-likelihood of the
audio, and the best is the question answered.

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
from model.questions import COLOURS, SHAPES, SIZES

# chosen on tuning clips apart from the evaluation's (`python -m bench.ctc_rescore`, model/MODEL_CARD.md)
CTC_WEIGHT = 0.5
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


@torch.inference_mode()
def joint_scores(
    decoder: Decoder, head: torch.nn.Linear, tokens: torch.Tensor, rows: Sequence[Sequence[int]], weight: float
) -> torch.Tensor:
    """`weight` × CTC + (1 - `weight`) × attention log-likelihood of each token row ([BOS] ... [EOS]) given one
    audio's tower tokens (n, d); CTC's blank is the head's last class."""
    n = len(rows)
    seq = torch.zeros(n, max(map(len, rows)), dtype=torch.long, device=tokens.device)
    valid = torch.zeros(n, seq.shape[1] - 1, device=tokens.device)
    for r, row in enumerate(rows):
        seq[r, : len(row)] = torch.tensor(row)
        valid[r, : len(row) - 1] = 1
    inputs = seq[:, :-1]
    steps = inputs.shape[1]
    positions = torch.arange(steps, device=tokens.device).expand_as(inputs)
    causal = torch.ones(steps, steps, dtype=torch.bool, device=tokens.device).tril()[None, None]
    logits = decoder(inputs, positions, causal, tokens[None].expand(n, -1, -1))
    attention = -(F.cross_entropy(logits.float().transpose(1, 2), seq[:, 1:], reduction="none") * valid).sum(1)
    log_probs = F.log_softmax(head(tokens).float(), -1)[:, None].expand(-1, n, -1)  # (N, R, V + 1)
    ctc = -F.ctc_loss(
        log_probs,
        seq[:, 1:-1],
        torch.full((n,), tokens.shape[0], dtype=torch.long),
        torch.tensor([len(r) - 2 for r in rows]),
        blank=log_probs.shape[-1] - 1,
        reduction="none",
        zero_infinity=True,
    )
    return weight * ctc + (1 - weight) * attention
