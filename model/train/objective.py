"""The training objectives: captioning and VQA cross-entropy on one decoder pass, locked-text contrastive, and
transcription (the speech stage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.multimodal import MultimodalTransformer
from model.train.data import Batch


def token_losses(
    module: MultimodalTransformer, context: torch.Tensor, seq: torch.Tensor, context_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Teacher-forced cross-entropy (R, T - 1) of token rows `seq` (R, T), each row reading its `context` (R, N, d)."""
    inputs = seq[:, :-1]
    T = inputs.shape[1]
    # built on the batch's device: a CPU tensor here fails on CUDA (tests/model/test_train.py runs on meta)
    positions = torch.arange(T, device=seq.device).expand_as(inputs)
    causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()[None, None]  # right padding: causal is enough
    cross = None if context_valid is None else context_valid[:, None, None, :]
    logits = module.decoder(inputs, positions, causal, context, context_mask=cross)  # (R, T, V)
    return F.cross_entropy(logits.transpose(1, 2), seq[:, 1:], reduction="none")


def decoder_losses(module: MultimodalTransformer, tokens: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Captioning and VQA cross-entropy of a batch, on its images' tokens (B, N, d)."""
    seq, weight = batch["seq"], batch["weight"]
    n_images = tokens.shape[0]
    context = tokens.repeat(seq.shape[0] // n_images, 1, 1)  # captions first, then questions
    token_loss = token_losses(module, context, seq)  # (2B, T)
    caption_w, answer_w = weight[:n_images], weight[n_images:]
    caption_loss = (token_loss[:n_images] * caption_w).sum() / caption_w.sum()
    answer_loss = (token_loss[n_images:] * answer_w).sum() / answer_w.sum()
    return {"caption": caption_loss, "answer": answer_loss}


def losses(module: MultimodalTransformer, batch: Batch, text_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Captioning + VQA cross-entropy on one decoder pass, and the locked-text contrastive loss."""
    embedding, tokens = module.encode_image(batch["pixels"])
    captions = batch["captions"]
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32, device=tokens.device)
    soft = same / same.sum(1, keepdim=True)
    scale = module.logit_scale.exp().clamp(max=100)
    sims = scale * embedding @ text_embeddings.T  # (B, B)
    contrastive = (F.cross_entropy(sims, soft) + F.cross_entropy(sims.T, soft)) / 2
    align = (1 - (embedding * text_embeddings).sum(-1)).mean()
    return {**decoder_losses(module, tokens, batch), "contrastive": contrastive, "align": align}


def speech_losses(
    module: MultimodalTransformer,
    ctc_head: torch.nn.Module,
    features: torch.Tensor,
    lengths: torch.Tensor,
    seq: torch.Tensor,
    pad_id: int,
    ctc_reaches_tower: bool = True,
) -> dict[str, torch.Tensor]:
    """The transcripts `seq` (R, T: `[BOS] text [EOS]`, right-padded) read from the audio: the decoder's
    cross-entropy (`heard`), and CTC on the audio tokens through `ctc_head` (`ctc`; its blank is the last
    class), the auxiliary loss of hybrid CTC/attention recognisers, which makes the alignment learn sooner.
    `ctc_reaches_tower` False: the CTC loss trains its head alone (a fresh head over a trained tower)."""
    tokens, valid = module.encode_audio(features, lengths)
    token_loss = token_losses(module, tokens, seq, valid)
    weight = (seq[:, 1:] != pad_id).to(token_loss.dtype)
    heard = (token_loss * weight).sum() / weight.sum()
    ctc_input = tokens if ctc_reaches_tower else tokens.detach()
    log_probs = F.log_softmax(ctc_head(ctc_input).float(), dim=-1).transpose(0, 1)  # (N, R, V + 1)
    text = seq[:, 1:-1]  # without [BOS]; [EOS] and padding are dropped by the lengths below
    target_lengths = (text != pad_id).sum(1) - 1  # minus [EOS]
    ctc = F.ctc_loss(log_probs, text, valid.sum(1), target_lengths, blank=log_probs.shape[-1] - 1, zero_infinity=True)
    return {"heard": heard, "ctc": ctc}
