"""Generated sections of a hand-kept document: a tool rewrites only what stands between its own markers.

docs/benchmarks.md holds the suite's tables and sections written by hand (from other benchmarks) around
them. `bench/suite.py` writes its part between two marker lines,

    <!-- suite:begin serving -->
    ...
    <!-- suite:end serving -->

(HTML comments: a markdown view shows nothing of them), and `replace_section` swaps that part for the new
one, keeping every other line of the file as it was. A document without the section gets it at its end; a
document whose markers are broken (a begin without its end, a section twice) is refused rather than guessed at.
"""

from __future__ import annotations

import re


def begin_marker(name: str) -> str:
    return f"<!-- suite:begin {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- suite:end {name} -->"


def section(name: str, content: str) -> str:
    """`content` between the markers of section `name` (each on its own line)."""
    body = content if content.endswith("\n") or not content else content + "\n"
    return f"{begin_marker(name)}\n{body}{end_marker(name)}\n"


def replace_section(document: str, name: str, content: str) -> str:
    """`document` with section `name`'s content replaced by `content` (appended, markers and all, where the
    document has no such section); everything outside the section is kept as it was. Raises `ValueError`
    where the section's markers are not one begin line followed by one end line."""
    if _lines(content, begin_marker(name)) or _lines(content, end_marker(name)):
        raise ValueError(f"section {name!r}: its new content holds its own markers")
    begins = _lines(document, begin_marker(name))
    ends = _lines(document, end_marker(name))
    if not begins and not ends:
        separator = "" if not document or document.endswith("\n\n") else ("\n" if document.endswith("\n") else "\n\n")
        return document + separator + section(name, content)
    if len(begins) != 1 or len(ends) != 1:
        raise ValueError(f"section {name!r}: {len(begins)} begin and {len(ends)} end markers (one of each expected)")
    if ends[0].start() < begins[0].end():
        raise ValueError(f"section {name!r}: its end marker comes before its begin marker")
    start, stop = begins[0].start(), ends[0].end()
    after = document[stop:]
    return document[:start] + section(name, content) + after.removeprefix("\n")


def _lines(document: str, marker: str) -> list[re.Match[str]]:
    """The lines that are exactly `marker` (surrounding spaces allowed)."""
    return list(re.finditer(rf"^[ \t]*{re.escape(marker)}[ \t]*$", document, re.M))
