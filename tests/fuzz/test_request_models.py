"""Hypothesis over the request models and the 422 they produce: any body is a model or a JSON-safe 422.

Each case ends in one of two outcomes: a validated model, or a pydantic error whose 422 (as
`service.errors` writes it) serialises to UTF-8 JSON of bounded size, whatever the body held: invalid
UTF-8, lone surrogates, NUL bytes, deep nesting or a 10 MB string.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from service.errors import MAX_ECHOED_INPUT_CHARS, validation_detail
from service.schemas import CaptionJSON, EmbedJSON, VqaJSON
from service.settings import Settings
from service.uploads import validation_error

MODELS = [CaptionJSON, VqaJSON, EmbedJSON]
SETTINGS = Settings()
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["image", "input", "question", "question_audio", "max_new_tokens", "extra", "\x00", "\ud800"])
bodies = st.dictionaries(fields, json_values, max_size=4)


def response_for(model: type[BaseModel], body: bytes) -> bytes | None:
    """None when `body` validates; otherwise the 422 body the service would send (must encode)."""
    try:
        model.model_validate_json(body, context={"settings": SETTINGS})
        return None
    except ValidationError as e:
        detail = validation_detail(validation_error(e).errors())
    encoded = json.dumps({"detail": detail}, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    for item in detail:
        assert item["loc"][0] == "body"
        assert not isinstance(item.get("input"), str) or len(item["input"]) <= MAX_ECHOED_INPUT_CHARS + 1
    return encoded


@FUZZ
@given(st.sampled_from(MODELS), st.binary(max_size=512))
def test_random_bytes(model: type[BaseModel], body: bytes) -> None:
    response_for(model, body)


@FUZZ
@given(st.sampled_from(MODELS), bodies)
def test_random_json_objects(model: type[BaseModel], body: dict[str, object]) -> None:
    # json.dumps escapes lone surrogates as \\ud800, which is how a client would send them.
    response_for(model, json.dumps(body).encode())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\xfa",
        b'{"input": "\xed\xa0\x80"}',  # a UTF-8-encoded lone surrogate
        b'{"input": "\\ud800", "question": "\\udfff?"}',
        b'{"input": "a\\u0000b", "question": "\\u0000", "image": "\\u0000"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"question": "' + b"q" * 10_000_000 + b'", "input": "' + b"x" * 10_000_000 + b'"}',
        b'{"image": "' + b"A" * 10_000_001 + b'"}',
    ],
    ids=["invalid-utf8", "utf8-surrogate", "escaped-surrogates", "nul", "nested", "nested-input", "10mb", "bad-b64"],
)
def test_hostile_bodies(model: type[BaseModel], body: bytes) -> None:
    response = response_for(model, body)
    assert response is not None
    assert len(response) < 4096  # the 422 never echoes the body back
