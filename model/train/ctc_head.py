"""The CTC head for rescoring heard questions (`model.heard_rescoring`), trained over a frozen audio tower.

    python -m model.train.ctc_head [--init model/weights] [--pool runs/ctc_head/pool] [--size 12000] [--epochs 12]

A pool of training utterances of the `hearing` stage's wider variety (`model.train.speech_pool`, seeds from
`FIRST_SEED`, held-out sentences skipped as ever) is heard once by the checkpoint's audio tower; a linear head
(tower width → vocabulary + blank) then learns CTC over those tokens, the tower and decoder untouched, and is
written beside the weights (`ctc_head.safetensors`). The pool is kept (`--pool`): a second run reuses it.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.audio import pad_features
from model.checkpoint import WEIGHTS_DIR, load_builtin, save_ctc_head
from model.heard_rescoring import HEAD_FILE
from model.multimodal import MultimodalTransformer
from model.train.speech_pool import Variety, build_pool, load_pool

logger = logging.getLogger("model.train")

FIRST_SEED = 70_000_000  # the pool's seeds: apart from the hearing legs' pools (and from the held-out range)


@torch.inference_mode()
def tower_tokens(module: MultimodalTransformer, features: list[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """Each utterance's audio tokens (n, d) from the module's tower, shortest first in batches."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(features)
    order = sorted(range(len(features)), key=lambda i: features[i].shape[0])
    for start in range(0, len(order), batch):
        part = order[start : start + batch]
        padded, lengths = pad_features([features[i].float() for i in part])
        tokens, valid = module.encode_audio(padded, lengths)
        for row, i in enumerate(part):
            out[i] = tokens[row, : int(valid[row].sum())].clone()
    return out


def train_head(
    tokens: list[torch.Tensor], targets: list[list[int]], vocab: int, epochs: int, lr: float = 2e-3, seed: int = 0
) -> torch.nn.Linear:
    """A linear CTC head (blank: class `vocab`) over fixed audio tokens, Adam, batches of 64 in a seeded order."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(tokens[0].shape[-1], vocab + 1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    rng, order = random.Random(seed), list(range(len(tokens)))
    for epoch in range(epochs):
        rng.shuffle(order)
        total, batches = 0.0, 0
        for start in range(0, len(order), 64):
            part = order[start : start + 64]
            x = torch.nn.utils.rnn.pad_sequence([tokens[i] for i in part], batch_first=True)
            log_probs = F.log_softmax(head(x), -1).transpose(0, 1)
            loss = F.ctc_loss(
                log_probs,
                torch.cat([torch.tensor(targets[i]) for i in part]),
                torch.tensor([tokens[i].shape[0] for i in part]),
                torch.tensor([len(targets[i]) for i in part]),
                blank=vocab,
                zero_infinity=True,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        logger.info("ctc head: epoch %d of %d, loss %.4f", epoch + 1, epochs, total / batches)
    return head.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", type=Path, default=WEIGHTS_DIR, help="the checkpoint (its head is written there)")
    parser.add_argument("--pool", type=Path, default=Path("runs/ctc_head/pool"))
    parser.add_argument("--size", type=int, default=12_000, help="utterances in the pool")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model = load_builtin(args.init, "cpu")
    audio = model.module.config.audio
    if audio is None:
        raise SystemExit(f"{args.init} has no audio tower")
    if not any(args.pool.glob("*.pt")):
        build_pool(args.pool, args.size, audio, variety=Variety(varied=True), first_seed=FIRST_SEED)
    texts, features = load_pool(args.pool)
    tokens = tower_tokens(model.module, features)
    targets = [model.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    head = train_head(tokens, targets, model.module.config.decoder.vocab_size, args.epochs)
    save_ctc_head(head, args.init / HEAD_FILE)
    logger.info("wrote %s in %.1f minutes", args.init / HEAD_FILE, (time.monotonic() - started) / 60)


if __name__ == "__main__":
    main()
