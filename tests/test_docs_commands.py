"""The commands the docs give name what exists: each `pytest` command in docs/reliability.md selects at least
one test (a renamed test leaves a row that runs nothing and "passes"), each script a command runs is in the
repository, and README's exit-status table is `service.exits.ExitStatus`, status for status.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from _pytest.mark.expression import Expression

from service.exits import ExitStatus

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY = ROOT / "docs" / "reliability.md"
COMMAND = re.compile(r"`((?:python -m )?pytest [^`]+)`")
SCRIPT = re.compile(r"`(?:python|bash) ((?:bench|docker|tests)/[\w/.-]+\.(?:py|sh))")
SKIPPED_FILE = re.compile(r"^SKIPPED \[\d+\] (tests/[\w/]+\.py):\d+:", re.MULTILINE)  # a module skipped whole
EXIT_ROW = re.compile(r"^\| (\d+) \| (.+) \|$")


def _pytest_commands() -> list[tuple[list[str], str | None]]:
    """Each command's test paths and its `-k` expression (None: every test in them)."""
    commands = []
    for text in COMMAND.findall(RELIABILITY.read_text(encoding="utf-8")):
        words = shlex.split(text.removeprefix("python -m ").removeprefix("pytest "))
        paths = [word for word in words if word.startswith("tests/")]
        expression = words[words.index("-k") + 1] if "-k" in words else None
        commands.append((paths, expression))
    return commands


def _collected(paths: set[str]) -> tuple[list[str], set[str]]:
    """The node ids pytest collects from `paths`, and the test files it skipped whole (an optional extra, such
    as ray, not installed); in a fresh process, since collecting imports the test modules."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-rs", "-p", "no:cacheprovider", *sorted(paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    node_ids = [line for line in done.stdout.splitlines() if "::" in line and not line.startswith("SKIPPED")]
    return node_ids, set(SKIPPED_FILE.findall(done.stdout))


def _under(node_id: str, path: str) -> bool:
    """Whether pytest, given `path` (a folder, a file or a node id), collects the test `node_id`."""
    return node_id.startswith(path) and node_id[len(path) : len(path) + 1] in ("", ":", "/", "[")


def _selected(node_id: str, paths: list[str], expression: str | None) -> bool:
    if not any(_under(node_id, path) for path in paths):
        return False
    if expression is None:
        return True
    # `-k` matches a name case-insensitively as a part of the test's name or of its module's, as pytest does
    names = [part.lower() for part in re.split(r"::|/", node_id)]

    def matches(word: str, /, **_: str | int | bool | None) -> bool:
        return any(word.lower() in name for name in names)

    return Expression.compile(expression).evaluate(matches)


def test_every_pytest_command_in_the_reliability_table_selects_tests() -> None:
    commands = _pytest_commands()
    assert len(commands) >= 20  # the table's rows were read
    for paths, _ in commands:
        assert paths and all((ROOT / path.split("::")[0]).exists() for path in paths), paths
    node_ids, skipped = _collected({path for paths, _ in commands for path in paths})
    empty = [(paths, expression) for paths, expression in commands
             if not any(_selected(node_id, paths, expression) for node_id in node_ids)
             and not all(path.split("::")[0] in skipped for path in paths)]  # fmt: skip
    assert not empty, f"commands in {RELIABILITY.name} that select no test: {empty}"


def test_every_script_a_reliability_command_runs_exists() -> None:
    scripts = SCRIPT.findall(RELIABILITY.read_text(encoding="utf-8"))
    assert "bench/soak.py" in scripts
    missing = [script for script in scripts if not (ROOT / script).is_file()]
    assert not missing, missing


def test_the_readmes_exit_statuses_are_the_services() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("**Exit statuses**", 1)[1].split("\n\n", 2)[1]
    rows = [EXIT_ROW.match(line) for line in table.splitlines()[2:]]
    assert all(rows), table
    assert [int(row[1]) for row in rows if row] == [status.value for status in ExitStatus]
