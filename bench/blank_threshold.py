"""How likely the end must be for the built-in model to leave a transcript blank (`MIN_BLANK_PROB`), on tuning clips.

    python -m bench.blank_threshold [--model builtin|FOLDER]

The built-in model writes nothing for audio that is not a scene sentence, and a blank transcript is refused as
"nothing understood". Decoded greedily, a scene question in a voice it never heard is sometimes left blank too
(the end the likeliest first token, at 0.5-0.9). With `blank_min_prob`, a transcript is blank only when the end
is at least that likely; else the model writes what it heard best, and the other criteria (`avg_logprob`, the
voice-activity detector) still apply. This prints, for no threshold (greedy) and thresholds from 0.5 to 0.99,
the share of in-domain questions refused and of out-of-domain speech refused, on clips apart from `mmserve
evaluate`'s:
- in-domain: 300 scene questions (scenes from `SEED_START`, not the spoken `/vqa` evaluation's) in held-out
  voices (the voices where a question is left blank by mistake);
- out-of-domain speech: everyday English sentences that the evaluation does not use, in five accents, and three
  languages that neither training nor the evaluation ever hears (Afrikaans, Catalan, Croatian).
Noise, melodies and near-silence are left out: the voice-activity detector refuses them whatever the threshold.
"""

from __future__ import annotations

import argparse
import math

import torch

from model import load_model
from model.api import MultimodalModel
from model.refusal_eval import hear, spoken
from model.scenes import HELD_OUT_SEED_START
from model.spoken_vqa_eval import spoken_questions
from model.understanding import Heard, default_criteria, refusal

SEED_START = HELD_OUT_SEED_START + 8_000_000  # apart from the evaluation's scenes (+5,000,000 to +7,000,000)
ENGLISH = (
    "could you pass me the salt please",
    "the shop closes at half past five",
    "have you seen my glasses anywhere",
    "we should leave before the traffic gets bad",
    "i think i left the oven on",
    "what are you doing this evening",
    "the doctor will see you in ten minutes",
    "please turn left at the next junction",
    "my sister lives in a small village",
    "the coffee machine is broken again",
    "did you remember to buy some bread",
    "the concert starts at nine tonight",
    "i need to charge my phone",
    "how long does it take to get there",
    "the garden looks lovely in the spring",
    "can i pay by card",
    "our neighbours have a new puppy",
    "let me know when you arrive",
    "the printer on the second floor is out of paper",
    "he always walks to work in the morning",
)
OTHER_LANGUAGES = {
    "af": (
        "goeie more, hoe gaan dit met jou",
        "ek wil graag 'n koppie koffie he",
        "waar is die naaste stasie",
        "die kat slaap op die bank",
        "baie dankie vir jou hulp",
    ),
    "ca": (
        "bon dia, com estas avui",
        "voldria reservar una taula per a dues persones",
        "on es l'estacio mes propera",
        "fa molt bon temps aquest mati",
        "moltes gracies per la teva ajuda",
    ),
    "hr": (
        "dobro jutro, kako ste danas",
        "htio bih rezervirati stol za dvoje",
        "gdje je najbliza stanica",
        "vrijeme je danas jako lijepo",
        "hvala vam na pomoci",
    ),
}
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def in_domain(n: int = 300) -> tuple[list[str], list]:  # type: ignore[type-arg]
    """`n` scene questions and their clips, each in a held-out voice (`spoken_questions` from `SEED_START`)."""
    asked = spoken_questions(n, SEED_START)
    return [q.text for q in asked.questions], asked.clips


def out_of_domain() -> list:  # type: ignore[type-arg]
    accents = ("en-us", "en-gb", "en-029", "en-us-nyc", "en-gb-scotland")
    clips = spoken(ENGLISH, accents, 80, first_seed=20_000)
    for k, (voice, texts) in enumerate(OTHER_LANGUAGES.items()):
        clips += spoken(texts, (voice,), 20, first_seed=30_000 + 1_000 * k)
    return clips


def at(threshold: float, natural: Heard, forced: Heard) -> Heard:
    """What the model hears with `blank_min_prob` = `threshold`, from its greedy transcript and its transcript
    with the end never first (a blank greedy transcript's `avg_logprob` is the log-probability of the end)."""
    if natural.text.strip() or natural.avg_logprob is None:
        return natural
    return natural if math.exp(natural.avg_logprob) >= threshold else forced


def both(model: MultimodalModel, clips: list) -> list[tuple[Heard, Heard]]:  # type: ignore[type-arg]
    model.blank_min_prob = 0.0  # type: ignore[attr-defined]
    natural = hear(model, clips)
    model.blank_min_prob = 2.0  # type: ignore[attr-defined]  # the end never first
    forced = hear(model, clips)
    return list(zip(natural, forced, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model, "cpu")
    questions, clips = in_domain()
    inside, outside = both(model, clips), both(model, out_of_domain())
    groups = {
        "English": outside[:80],
        **{v: outside[80 + 20 * k : 100 + 20 * k] for k, v in enumerate(OTHER_LANGUAGES)},
    }
    criteria = default_criteria()

    def refused(pairs: list[tuple[Heard, Heard]], threshold: float) -> list[bool]:
        return [refusal(at(threshold, *pair), criteria) is not None for pair in pairs]

    print(
        "blank_min_prob | in-domain refused | kept, heard word for word | out-of-domain speech refused | "
        + " | ".join(groups)
    )
    for threshold in THRESHOLDS:
        kept = [
            at(threshold, *pair).text == q
            for pair, q, r in zip(inside, questions, refused(inside, threshold), strict=True)
            if not r
        ]
        shares = [sum(refused(pairs, threshold)) / len(pairs) for pairs in groups.values()]
        print(
            f"{threshold:.2f} | {sum(refused(inside, threshold)) / len(inside):.3f} | {sum(kept)} of {len(kept)} | "
            f"{sum(refused(outside, threshold)) / len(outside):.3f} | " + " | ".join(f"{x:.3f}" for x in shares)
        )


if __name__ == "__main__":
    main()
