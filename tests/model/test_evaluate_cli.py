"""`mmserve evaluate`'s command line: what it refuses before loading anything."""

from __future__ import annotations

import pytest

from model.evaluate import main


def test_unknown_speech_sets_are_refused_with_the_names_it_knows(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--speech-sets", "held_out_voices", "martian_voices"])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "unknown speech sets ['martian_voices']" in message
    assert "flite_held_out_voice" in message and "train_voices" in message
