"""Would joint CTC/attention rescoring fix spoken `/vqa`'s mishearings? (issue 23; measured, not shipped)

    python -m bench.ctc_rescore --state runs/hear4/hearing/train_state.pt [--model builtin|FOLDER]

Hybrid CTC/attention recognisers (Watanabe et al., 2017) score a hypothesis by both the attention decoder and
a CTC head over the audio tokens, which knows no sentence prior. The built-in model's CTC head exists only in
the hearing stage's training state (`--state`: a run's `hearing/train_state.pt`, from the same run as the
weights). For each spoken `/vqa` clip (`model.spoken_vqa_eval`'s) the service would not refuse, the heard
question and every variant with one colour, shape, size or plural shape swapped for another of its kind are
scored by lambda x CTC + (1 - lambda) x attention log-likelihoods, and the best is answered. Prints spoken
`/vqa` accuracy and questions heard word for word for each lambda (0: the decoder alone, as shipped), and
the held-out questions of the WER sets (`eval_utterances`) heard word for word with and without it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model import load_model
from model.audio import pad_features
from model.evaluate import normalise_words
from model.multimodal import BuiltinModel
from model.refusal_eval import hear
from model.scenes import COLOURS, SHAPES, SIZES, render
from model.spoken_vqa_eval import spoken_questions
from model.tokenizer import BOS, EOS
from model.train.objective import token_losses
from model.train.speech import eval_utterances, synthesise
from model.understanding import default_criteria, refusal

KINDS = (list(SHAPES), list(COLOURS), list(SIZES), [s + "s" for s in SHAPES])


def variants(text: str) -> list[str]:
    """`text` and every text with one scene word swapped for another of its kind."""
    words = text.split()
    found = {text}
    for i, word in enumerate(words):
        core = word.rstrip("?")
        for kind in KINDS:
            if core in kind:
                found |= {" ".join([*words[:i], word.replace(core, other), *words[i + 1 :]]) for other in kind}
    return sorted(found)


@torch.inference_mode()
def rescored(model: BuiltinModel, head: torch.nn.Linear, clip: np.ndarray, text: str, weight: float) -> str:
    """The variant of `text` with the best joint score (`weight` on CTC) for `clip`."""
    texts = variants(text)
    features, lengths = pad_features([model.prepare_audio(clip)])
    tokens, valid = model.module.encode_audio(features, lengths)
    bos, eos = model.tokenizer.token_to_id(BOS), model.tokenizer.token_to_id(EOS)
    rows = [[bos, *model.tokenizer.encode(t, add_special_tokens=False).ids, eos] for t in texts]
    seq = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros(len(rows), seq.shape[1] - 1)
    for r, row in enumerate(rows):
        seq[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row) - 1] = 1
    n = len(rows)
    attention = -(token_losses(model.module, tokens.expand(n, -1, -1), seq, valid.expand(n, -1)) * mask).sum(1)
    log_probs = F.log_softmax(head(tokens).float(), -1).transpose(0, 1).expand(-1, n, -1)
    ctc = -F.ctc_loss(
        log_probs,
        seq[:, 1:-1],
        valid.sum(1).expand(n),
        torch.tensor([len(r) - 2 for r in rows]),
        blank=log_probs.shape[-1] - 1,
        reduction="none",
        zero_infinity=True,
    )
    return texts[int((weight * ctc + (1 - weight) * attention).argmax())]


def same(a: str, b: str) -> bool:
    return normalise_words(a) == normalise_words(b)


def report(model: BuiltinModel, head: torch.nn.Linear, weights: Sequence[float], n: int = 300) -> None:
    asked = spoken_questions(n)
    questions, clips = asked.questions, asked.clips
    heard = hear(model, clips)
    images = [render(s) for s in asked.scenes]
    refused = [refusal(h, default_criteria()) is not None for h in heard]
    for weight in weights:
        texts = [
            h.text if r else rescored(model, head, c, h.text, weight)
            for c, h, r in zip(clips, heard, refused, strict=True)
        ]
        answers = model.answer(images, [t or "?" for t in texts])
        right = sum(a == q.answer and not r for a, q, r in zip(answers, questions, refused, strict=True))
        exact = sum(same(t, q.text) for t, q in zip(texts, questions, strict=True))
        print(
            f"CTC weight {weight}: spoken /vqa {right} of {n} ({n - sum(refused)} not refused), "
            f"heard word for word {exact}"
        )
    for held_out in (False, True):
        said = [u for u in eval_utterances(held_out) if u.text.endswith("?")]
        clips = [synthesise(u, 16_000, i) for i, u in enumerate(said)]
        texts = [h.text for h in hear(model, clips)]
        for weight in (0.0, max(weights)):
            out = [t and rescored(model, head, c, t, weight) for c, t in zip(clips, texts, strict=True)]
            exact = sum(same(t, u.text) for t, u in zip(out, said, strict=True))
            voices = "held-out" if held_out else "training"
            print(f"WER sets' questions, {voices} voices, CTC weight {weight}: {exact} of {len(said)} word for word")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--state", required=True, help="the hearing stage's train_state.pt of the same run")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model, "cpu")
    assert isinstance(model, BuiltinModel)
    saved = torch.load(args.state, map_location="cpu", weights_only=False)["ctc_head"]
    head = torch.nn.Linear(saved["weight"].shape[1], saved["weight"].shape[0])
    head.load_state_dict(saved)
    report(model, head, args.weights)


if __name__ == "__main__":
    main()
