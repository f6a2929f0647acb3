"""`python -m tests.support.slow_denoise_server serve`: the service, except that every UNet call (one denoising
step of the running images) first sleeps `MMSERVE_TEST_STEP_S` seconds (default 0.05): a slow device, so
that a test can leave, or pass its deadline, while an image is still denoising. Only the UNet's forward is
slowed; the images are the same.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from diffusers import UNet2DConditionModel

from service.cli import main

STEP_S = float(os.environ.get("MMSERVE_TEST_STEP_S", "0.05"))
_real_forward = UNet2DConditionModel.forward


@functools.wraps(_real_forward)
def _forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    time.sleep(STEP_S)
    return _real_forward(self, *args, **kwargs)


UNet2DConditionModel.forward = _forward  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
