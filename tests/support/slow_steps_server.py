"""`python -m tests.support.slow_steps_server serve`: the service, except that with a Hugging Face BLIP
captioner every decoding step takes `STEP_S` (a slow device) and never ends the caption early, and a
caption asked for `HANG_MAX_NEW_TOKENS` tokens hangs for good after `HANG_AFTER_STEPS` steps (a device
stuck mid-generation). For the watchdog's test that it times steps, not whole generations: transformers'
own `generate` runs unchanged; only the text decoder's forward is slowed.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from transformers import BlipForConditionalGeneration
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel

from service.cli import main

STEP_S = 0.25  # each decoding step's delay
HANG_MAX_NEW_TOKENS = 13  # a caption asked for this many tokens hangs ...
HANG_AFTER_STEPS = 4  # ... at this step
SEP_ID = 102  # BLIP's end of sequence (tests/support/hf_checkpoints.py)

_generation = threading.local()  # the steps of the generation running on this thread
_real_generate = BlipForConditionalGeneration.generate
_real_forward = BlipTextLMHeadModel.forward


def _generate(self: Any, *args: Any, **kwargs: Any) -> Any:
    _generation.steps = 0
    _generation.hangs = kwargs.get("max_new_tokens") == HANG_MAX_NEW_TOKENS
    return _real_generate(self, *args, **kwargs)


@functools.wraps(_real_forward)  # generate checks its keyword arguments against forward's signature
def _forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    steps = getattr(_generation, "steps", 0)
    _generation.steps = steps + 1
    if getattr(_generation, "hangs", False) and steps >= HANG_AFTER_STEPS:
        threading.Event().wait()  # forever
    time.sleep(STEP_S)
    out = _real_forward(self, *args, **kwargs)
    out.logits[..., SEP_ID] = float("-inf")  # every caption runs to its limit
    return out


BlipForConditionalGeneration.generate = _generate  # type: ignore[method-assign]
BlipTextLMHeadModel.forward = _forward  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
