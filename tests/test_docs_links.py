"""The README and the docs link only to files in the repository, and every file they link to exists.

A clone has nothing outside its own tree (no `../shared/`), so a link that leaves it, or names a file that
was moved, is a broken link for every reader. Links are `[text](target)`; file names in code spans
(`docker/nginx.conf`, relative to the repository's root or to the document) are checked too.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target "title")
# A relative path with a folder and a file's extension in a code span (absolute paths are the container's).
FILE_IN_CODE = re.compile(
    r"`((?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)+\.(?:md|py|sh|ya?ml|toml|json|png|conf|txt|html|js|css))`"
)
ELSEWHERE = ("http://", "https://", "mailto:")


def _markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): every file then
        return sorted(ROOT.glob("**/*.md"))
    return [ROOT / name for name in listed.stdout.split()]


@pytest.mark.parametrize("document", _markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_links_stay_in_the_repository_and_resolve(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        path = target.split("#", 1)[0]
        if target.startswith(ELSEWHERE) or not path:
            continue
        if not _in_repository(document.parent / path):
            broken.append(target)
    for path in FILE_IN_CODE.findall(text):
        if not (_in_repository(ROOT / path) or _in_repository(document.parent / path)):
            broken.append(f"`{path}`")
    assert broken == [], f"{document.relative_to(ROOT)} links outside the repository or to missing files: {broken}"


def _in_repository(path: Path) -> bool:
    resolved = path.resolve()
    return resolved.is_relative_to(ROOT) and resolved.exists()
