"""Evaluate the built-in model on held-out scenes: `python -m model.evaluate` / `mmserve evaluate`.

Held-out scenes come from seeds at and above `HELD_OUT_SEED_START`, which training never draws. Reports
caption exact match and token F1, per-attribute accuracy, VQA accuracy per question family, text→image
and image→text recall@1 among 100, the text tower's parity with sentence-transformers, and for a model
that hears, the word error rate on held-out sentences spoken in training voices and in held-out voices
(`model.train.speech`; needs espeak-ng), and the share of spoken questions refused as not understood:
in-domain questions in held-out voices against out-of-domain audio (`model.refusal_eval`; `--refusals`
runs only that); the full run writes them into `model/MODEL_CARD.md`. With
`--generate` it evaluates the text-to-image generator instead (`model.generator_eval`: its images of
held-out captions, read back by the captioner) and writes the card's generator section.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model.api import MultimodalModel
from model.scenes import HELD_OUT_SEED_START, QUESTION_FAMILIES, Scene, ask, make_scene, render
from model.understanding import Criterion, default_criteria

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from model.multimodal import MultimodalTransformer
    from model.text import TextTower

logger = logging.getLogger("model.evaluate")

CARD = Path(__file__).resolve().parent / "MODEL_CARD.md"
PARITY_SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome!",
    "The cat sits outside on the mat.",
    "Two dogs play in the snow near a frozen lake.",
    "Quantum computers exploit superposition and entanglement.",
    "How do I reset my password?",
    "a large red circle, a small blue square and a small green diamond",
    "Le chat est sur la table.",
    "",
]


def token_f1(predicted: str, reference: str) -> float:
    p, r = predicted.split(), reference.split()
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def parse_caption(caption: str) -> list[tuple[str, ...]]:
    """'a large red circle and a small blue square' → [('large', 'red', 'circle'), ...]."""
    phrases = re.split(r",\s*|\s+and\s+", caption.strip())
    return [tuple(p.split()[1:]) for p in phrases if p]


def attribute_accuracy(scenes: list[Scene], captions: list[str]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for scene, caption in zip(scenes, captions, strict=True):
        objects = parse_caption(caption)
        hits["count"].append(len(objects) == len(scene.objects))
        for truth, guess in zip(scene.objects, objects, strict=False):
            guess = (*guess, "", "", "")[:3]
            hits["size"].append(guess[0] == truth.size)
            hits["colour"].append(guess[1] == truth.colour)
            hits["shape"].append(guess[2] == truth.shape)
    return {f"attr_{k}": sum(v) / max(1, len(v)) for k, v in hits.items()}


def recall_at_1(
    image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str], group: int = 100
) -> tuple[float, float]:
    """Recall@1 among `group` candidates, both ways. A hit is a retrieved item with the same caption
    (scenes that share a caption are indistinguishable by it)."""
    t2i, i2t = [], []
    for start in range(0, len(captions) - group + 1, group):
        img, txt = image_emb[start : start + group], text_emb[start : start + group]
        caps = captions[start : start + group]
        sims = img @ txt.T  # (images, texts)
        for i, j in enumerate(sims.argmax(1).tolist()):
            i2t.append(caps[j] == caps[i])
        for j, i in enumerate(sims.argmax(0).tolist()):
            t2i.append(caps[i] == caps[j])
    return sum(t2i) / max(1, len(t2i)), sum(i2t) / max(1, len(i2t))


def evaluate_model(model: MultimodalModel, n_scenes: int = 1000, chunk: int = 100) -> dict[str, float]:
    """All held-out metrics of a `MultimodalModel` on `n_scenes` scenes."""
    scenes = [make_scene(HELD_OUT_SEED_START + i) for i in range(n_scenes)]
    images = [render(s) for s in scenes]
    captions: list[str] = []
    for start in range(0, n_scenes, chunk):
        captions += model.caption(images[start : start + chunk], max_new_tokens=40)
    truths = [s.caption for s in scenes]
    metrics: dict[str, float] = {
        "caption_exact_match": sum(p == t for p, t in zip(captions, truths, strict=True)) / n_scenes,
        "caption_token_f1": sum(token_f1(p, t) for p, t in zip(captions, truths, strict=True)) / n_scenes,
    }
    metrics |= attribute_accuracy(scenes, captions)

    rng = random.Random(1234)
    asked = [(i, q) for i, s in enumerate(scenes) for f in QUESTION_FAMILIES if (q := ask(s, f, rng))]
    answers: list[str] = []
    for start in range(0, len(asked), chunk):
        part = asked[start : start + chunk]
        answers += model.answer([images[i] for i, _ in part], [q.text for _, q in part])
    per_family: dict[str, list[bool]] = defaultdict(list)
    for (_, q), a in zip(asked, answers, strict=True):
        per_family[q.family].append(a == q.answer)
    for family in QUESTION_FAMILIES:
        metrics[f"vqa_{family}"] = sum(per_family[family]) / max(1, len(per_family[family]))
    metrics["vqa_overall"] = sum(sum(v) for v in per_family.values()) / max(1, len(answers))
    # position questions naming an object in three words ("is the large red circle left of ...?"): the hardest
    three = [a == q.answer for (_, q), a in zip(asked, answers, strict=True) if q.names_three_words]
    metrics["vqa_position_three_words"] = sum(three) / max(1, len(three))

    image_emb = torch.cat([model.embed_image(images[s : s + chunk]) for s in range(0, n_scenes, chunk)])
    text_emb = model.embed_text(truths)
    metrics["recall@1_text_to_image"], metrics["recall@1_image_to_text"] = recall_at_1(image_emb, text_emb, truths)
    return metrics


def quick_eval(
    module: MultimodalTransformer, tokenizer: Tokenizer, text_tower: TextTower, n_scenes: int = 200
) -> dict[str, float]:
    """The held-out metrics of a module being trained (used by model.train for its progress log)."""
    from model.multimodal import BuiltinModel

    return evaluate_model(BuiltinModel(module, tokenizer, text_tower), n_scenes=n_scenes)


def normalise_words(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: what a word error rate compares."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate (substitutions, deletions and insertions over reference words), after normalising."""
    import jiwer

    hypotheses = [normalise_words(h) or "<empty>" for h in hypotheses]  # jiwer refuses an empty hypothesis
    return float(jiwer.wer([normalise_words(r) for r in references], hypotheses))


VOICE_SETS = ("train_voices", "held_out_voices")  # the held-out sentences in training voices, in held-out ones


def speech_metrics(
    model: MultimodalModel, per_condition: int = 100, only: Sequence[str] | None = None
) -> dict[str, float]:
    """WER on the held-out sentences (synthesised by espeak-ng): in training voices and in held-out ones (300
    each), and `per_condition` of them under each listening condition of `model.train.speech.CONDITIONS`;
    `only`: just these sets (names of conditions, or `train_voices` / `held_out_voices`)."""
    from model.train.speech import CONDITIONS, condition_utterances, eval_utterances, synthesise

    assert model.audio is not None
    names = [*VOICE_SETS, *CONDITIONS]
    sets = {}
    for name in names if only is None else [n for n in names if n in only]:
        if name in VOICE_SETS:
            sets[name] = eval_utterances(name == "held_out_voices")
        else:
            sets[name] = condition_utterances(name, per_condition)
    metrics = {}
    for name, utterances in sets.items():
        audios = [synthesise(u, model.audio.sampling_rate, i) for i, u in enumerate(utterances)]
        heard = [text for i in range(0, len(audios), 32) for text in model.transcribe(audios[i : i + 32])]
        metrics[f"wer_{name}"] = word_error_rate([u.text for u in utterances], heard)
    return metrics


def refusal_metrics(model: MultimodalModel, criteria: Sequence[Criterion] | None = None) -> dict[str, float]:
    """The share of spoken clips refused by `criteria` (default: the service's, `default_criteria()`): in-domain
    questions in held-out voices (to keep), each out-of-domain category and all of them (to refuse)."""
    from model.refusal_eval import heard_sets, refusal_rates

    rates = refusal_rates(heard_sets(model), default_criteria() if criteria is None else criteria)
    return {f"refused_{name}": share for name, share in rates.items()}


def text_tower_parity(model: MultimodalModel) -> float:
    """Lowest cosine between our text embeddings and sentence-transformers' on the same folder."""
    from sentence_transformers import SentenceTransformer

    from model.text import minilm_path

    reference = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    expected = reference.encode(PARITY_SENTENCES, convert_to_tensor=True).float().cpu()
    ours = model.embed_text(PARITY_SENTENCES)
    return float((expected * ours).sum(-1).min())


def write_card(metrics: dict[str, float], meta: dict[str, Any], path: Path = CARD) -> None:
    from model.generator_eval import card_section
    from model.text_to_image import GENERATOR_DIR

    template = (Path(__file__).resolve().parent / "MODEL_CARD.template.md").read_text()
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics.items())
    path.write_text(template.format(metrics=rows, generator=card_section(GENERATOR_DIR), **meta))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmserve evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin", help="'builtin' or a checkpoint folder")
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-card", action="store_true", help="print only; leave MODEL_CARD.md alone")
    parser.add_argument(
        "--generate",
        action="store_true",
        help="evaluate the text-to-image generator instead: its images of held-out captions, read back by --model",
    )
    parser.add_argument("--generator", type=Path, default=None, help="the generator folder (default: the shipped one)")
    parser.add_argument("--captions", type=int, default=None, help="held-out captions for --generate (default 500)")
    parser.add_argument(
        "--speech-sets",
        nargs="+",
        default=None,
        metavar="SET",
        help="only the word error rate on these sets (train_voices, held_out_voices or a condition of "
        "model.train.speech.CONDITIONS; printed, the card left alone)",
    )
    parser.add_argument(
        "--refusals",
        action="store_true",
        help="only the spoken-question refusal rates (printed; the card left alone)",
    )
    args = parser.parse_args(argv)
    if args.speech_sets:
        from model.train.speech import CONDITIONS

        known = [*VOICE_SETS, *CONDITIONS]
        unknown = set(args.speech_sets) - set(known)
        if unknown:
            parser.error(f"unknown speech sets {sorted(unknown)}: {', '.join(known)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from model import load_model
    from model.checkpoint import WEIGHTS_DIR

    model = load_model(args.model, args.device)
    if args.speech_sets:
        for k, v in speech_metrics(model, only=args.speech_sets).items():
            print(f"{k:32s} {v:.4f}")
        return
    if args.refusals:
        for k, v in refusal_metrics(model).items():
            print(f"{k:32s} {v:.4f}")
        return
    if args.generate:
        from model import generator_eval
        from model.text_to_image import GENERATOR_DIR

        n = args.captions or generator_eval.ROUND_TRIP_CAPTIONS
        folder = args.generator or GENERATOR_DIR
        for k, v in generator_eval.main(model, folder, n, None if args.no_card else CARD).items():
            print(f"{k:40s} {v:.4f}")
        return
    metrics = evaluate_model(model, n_scenes=args.scenes)
    try:
        metrics["text_tower_parity_min_cosine"] = text_tower_parity(model)
    except ImportError:
        logger.warning("sentence-transformers is not installed: parity not measured")
    if "transcribe" in model.tasks and model.audio is not None:
        from model.spoken_vqa_eval import spoken_vqa_metrics

        metrics.update(speech_metrics(model))
        metrics.update(refusal_metrics(model))
        metrics.update(spoken_vqa_metrics(model))
    for k, v in metrics.items():
        print(f"{k:32s} {v:.4f}")
    if not args.no_card:
        folder = WEIGHTS_DIR if args.model == "builtin" else Path(args.model)
        meta = json.loads((folder / "config.json").read_text())
        training = meta.get("training", {})
        write_card(metrics, {"scenes": args.scenes, "training": json.dumps(training, indent=2)})
        logger.info("wrote %s", CARD)


if __name__ == "__main__":
    main()
