"""The training objective: captioning and VQA cross-entropy on one decoder pass, and locked-text contrastive."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.multimodal import MultimodalTransformer
from model.train.data import Batch


def losses(module: MultimodalTransformer, batch: Batch, text_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Captioning + VQA cross-entropy on one decoder pass, and the locked-text contrastive loss."""
    embedding, tokens = module.encode_image(batch["pixels"])
    seq, weight = batch["seq"], batch["weight"]
    n_images = tokens.shape[0]
    context = tokens.repeat(seq.shape[0] // n_images, 1, 1)  # captions first, then questions
    inputs = seq[:, :-1]
    T = inputs.shape[1]
    # built on the batch's device: a CPU tensor here fails on CUDA (tests/model/test_train.py runs on meta)
    positions = torch.arange(T, device=seq.device).expand_as(inputs)
    causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()[None, None]  # right padding: causal is enough
    logits = module.decoder(inputs, positions, causal, context)  # (2B, T, V)
    token_loss = F.cross_entropy(logits.transpose(1, 2), seq[:, 1:], reduction="none")  # (2B, T)
    caption_w, answer_w = weight[:n_images], weight[n_images:]
    caption_loss = (token_loss[:n_images] * caption_w).sum() / caption_w.sum()
    answer_loss = (token_loss[n_images:] * answer_w).sum() / answer_w.sum()

    captions = batch["captions"]
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32, device=seq.device)
    soft = same / same.sum(1, keepdim=True)
    scale = module.logit_scale.exp().clamp(max=100)
    sims = scale * embedding @ text_embeddings.T  # (B, B)
    contrastive = (F.cross_entropy(sims, soft) + F.cross_entropy(sims.T, soft)) / 2
    align = (1 - (embedding * text_embeddings).sum(-1)).mean()
    return {"caption": caption_loss, "answer": answer_loss, "contrastive": contrastive, "align": align}
