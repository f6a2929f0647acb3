"""Questions the model serving /vqa knows: refused before they are queued, and answers it never wrote.

A model with a closed grammar (the built-in one, `model.KnowsQuestions`) answers only the question families
it was trained on. A question, typed or heard in a spoken one, is read in the model's trained phrasing
(normalised: case, punctuation, spellings) before it is queued, and one of no known family is a 422 that says
what was asked (or heard) and which questions the model knows. An empty answer from such a model (its hidden
scratchpad never ended, or nothing followed it) is a 422 too, never a 200 with "". Models of open vocabulary
(Hugging Face VQA models) get their questions as asked, and their answers as they are.
"""

from __future__ import annotations

from model import Task, UnknownQuestion
from service.engine import Engine
from service.errors import QuestionNotUnderstood

SPOKEN_FIELD = "question_audio"


def known_question(engine: Engine, task: Task, question: str | None, spoken: bool = False) -> str | None:
    """The question as the model reads it (None for a caption), or `QuestionNotUnderstood` (422)."""
    if task != "vqa" or question is None:
        return question
    try:
        return engine.known_question(task, question)
    except UnknownQuestion as e:
        name = engine.model_name(task)
        asked = f"the question heard in {SPOKEN_FIELD}, {question!r}," if spoken else repr(question)
        raise QuestionNotUnderstood(
            f"{asked} is not a question the built-in model ({name}) knows; it answers: {e.known}",
            param=SPOKEN_FIELD if spoken else "question",
        ) from e


def check_answered(
    engine: Engine, task: Task, question: str | None, answer: str, finish_reason: str | None, spoken: bool = False
) -> None:
    """`QuestionNotUnderstood` (422) when a closed-grammar model wrote no answer to a question."""
    if task != "vqa" or answer.strip() or not engine.knows_questions(task):
        return
    name = engine.model_name(task)
    asked = f"the question heard in {SPOKEN_FIELD}, {question!r}" if spoken else repr(question)
    why = (
        "within the tokens allowed (its hidden scratchpad comes first: allow more)"
        if finish_reason == "length"
        else "(it did not understand the question)"
    )
    raise QuestionNotUnderstood(
        f"the built-in model ({name}) wrote no answer to {asked} {why}", param=SPOKEN_FIELD if spoken else "question"
    )
