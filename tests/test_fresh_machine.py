"""README's test command on a fresh machine: a test that needs a Debian package (espeak-ng, chromium) skips
without it, saying in pytest's summary what to install, instead of failing. Checked by running such tests
in a pytest whose PATH has neither program (so `shutil.which` finds none, as on a machine without them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDS_A_PACKAGE = [
    "tests/model/test_shipped_checkpoint.py::test_transcribes_held_out_sentences",  # espeak-ng
    "tests/model/test_shipped_checkpoint.py::test_hears_a_question_and_answers_it",  # espeak-ng
    "tests/e2e/test_playground.py::test_caption_answer_and_similarity_in_a_real_browser",  # chromium
]


def test_tests_that_need_espeak_ng_or_chromium_skip_without_them_and_say_why(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no program is found
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *NEEDS_A_PACKAGE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout
    assert done.returncode == 0, summary[-4000:] + done.stderr[-4000:]
    assert f"{len(NEEDS_A_PACKAGE)} skipped" in summary, summary[-4000:]
    assert "failed" not in summary and "error" not in summary.lower(), summary[-4000:]
    assert summary.count("espeak-ng is not installed: apt-get install espeak-ng") == 2, summary[-4000:]
    assert "chromium is not installed: apt-get install chromium" in summary, summary[-4000:]
