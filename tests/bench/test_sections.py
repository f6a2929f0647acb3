"""The suite rewrites only its own section of docs/benchmarks.md (`bench.sections.replace_section`): what
stands outside its markers, before and after, is kept to the byte; broken markers are refused, not guessed
at. No benchmark runs: the suite's `main` is checked with its measuring parts stubbed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench import report, suite, wrk
from bench.sections import begin_marker, end_marker, replace_section, section

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"

HAND_BEFORE = "# Notes written by hand\n\nKept as it is.\n\n"
HAND_AFTER = "\n## Another table by hand\n\n| a | b |\n| - | - |\n| 1 | 2 |\n"


def test_only_the_section_between_its_markers_is_replaced() -> None:
    document = HAND_BEFORE + section("serving", "# Old tables\n\n| old |\n") + HAND_AFTER
    replaced = replace_section(document, "serving", "# New tables\n\n| new |\n")
    assert replaced == HAND_BEFORE + section("serving", "# New tables\n\n| new |\n") + HAND_AFTER
    assert replace_section(replaced, "serving", "# Old tables\n\n| old |\n") == document  # and back
    assert replace_section(replaced, "serving", "# New tables\n\n| new |\n") == replaced  # the same: no change


def test_other_sections_are_left_alone() -> None:
    document = section("serving", "tables\n") + "\nby hand\n\n" + section("other", "its own\n")
    replaced = replace_section(document, "other", "rewritten\n")
    assert replaced == section("serving", "tables\n") + "\nby hand\n\n" + section("other", "rewritten\n")


def test_content_without_a_final_newline_and_a_file_that_ends_at_the_marker() -> None:
    document = "before\n" + begin_marker("serving") + "\nold\n" + end_marker("serving")  # no newline at the end
    assert replace_section(document, "serving", "new") == "before\n" + section("serving", "new\n")


def test_a_document_without_the_section_gets_it_at_its_end() -> None:
    assert replace_section("", "serving", "tables\n") == section("serving", "tables\n")
    assert replace_section("by hand\n", "serving", "t\n") == "by hand\n\n" + section("serving", "t\n")
    assert replace_section("by hand", "serving", "t\n") == "by hand\n\n" + section("serving", "t\n")
    assert replace_section("by hand\n\n", "serving", "t\n") == "by hand\n\n" + section("serving", "t\n")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (f"{begin_marker('serving')}\nold\n", "1 begin and 0 end markers"),
        (f"old\n{end_marker('serving')}\n", "0 begin and 1 end markers"),
        (section("serving", "a\n") + section("serving", "b\n"), "2 begin and 2 end markers"),
        (f"{end_marker('serving')}\nold\n{begin_marker('serving')}\n", "end marker comes before its begin"),
    ],
)
def test_broken_markers_are_refused(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace_section(document, "serving", "new\n")


def test_content_that_holds_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="holds its own markers"):
        replace_section("", "serving", section("serving", "nested\n"))


def test_the_benchmarks_page_keeps_its_hand_written_sections() -> None:
    """docs/benchmarks.md: its suite section round-trips, and new tables leave every other line as it was."""
    document = DOCS.read_text()
    begin, end = document.index(begin_marker("serving")), document.index(end_marker("serving"))
    current = document[begin + len(begin_marker("serving")) + 1 : end]
    assert current.startswith("# Serving benchmark\n")  # what report.markdown writes
    assert replace_section(document, "serving", current) == document
    replaced = replace_section(document, "serving", "# Serving benchmark\n\nnew tables\n")
    assert replaced.replace("# Serving benchmark\n\nnew tables\n", current, 1) == document
    hand_written = [line for line in document[end:].splitlines() if line.startswith("## ")]
    assert len(hand_written) >= 3 and all(line in replaced.splitlines() for line in hand_written)


def stub_suite(monkeypatch: pytest.MonkeyPatch, tables: str) -> list[argparse.Namespace]:
    """`bench/suite.py`'s measuring parts stubbed: its main writes `tables`; the list gets each run's arguments."""
    runs: list[argparse.Namespace] = []

    class NoRun:
        def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
            self.args = args
            self.cells: list[Any] = []
            self.memory: list[Any] = []
            self.notes: list[str] = []

        def run(self) -> None:
            runs.append(self.args)

    monkeypatch.setattr(suite, "Suite", NoRun)
    monkeypatch.setattr(wrk, "wrk_binary", lambda: "wrk")
    monkeypatch.setattr(report, "markdown", lambda *args: tables)
    monkeypatch.setattr(report, "plot", lambda *args: False)
    return runs


def test_the_suite_writes_its_section_and_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench/suite.py`'s main, its measuring stubbed: an existing page keeps its hand-written text; a page
    with broken markers is refused before anything runs."""

    runs = stub_suite(monkeypatch, "# Serving benchmark\n\nfresh tables\n")
    page = tmp_path / "benchmarks.md"
    page.write_text(HAND_BEFORE + section("serving", "stale tables\n") + HAND_AFTER)
    suite.main(["--quick", "--servers", "mmserve", "--output", str(page), "--plot", str(tmp_path / "b.png")])
    assert page.read_text() == HAND_BEFORE + section("serving", "# Serving benchmark\n\nfresh tables\n") + HAND_AFTER
    page.write_text(HAND_BEFORE + begin_marker("serving") + "\nno end\n")
    with pytest.raises(ValueError, match="1 begin and 0 end markers"):
        suite.main(["--quick", "--servers", "mmserve", "--output", str(page), "--plot", str(tmp_path / "b.png")])
    assert len(runs) == 1  # refused before the run
    # a peer whose package is missing: refused before the run too (it would fail every cell of its own)
    page.write_text(HAND_BEFORE + section("serving", "stale tables\n") + HAND_AFTER)
    monkeypatch.setattr(suite, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="litserve not installed"):
        suite.main(["--quick", "--servers", "mmserve", "litserve", "--output", str(page)])
    assert len(runs) == 1


def test_another_text_length_mix_writes_its_own_section_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--words 8 20`: the tables of that mix go to their own section (the default mix's stays as it was) and
    their own plot; the texts have that many words."""
    from bench.workload import embed_texts

    runs = stub_suite(monkeypatch, "# Serving benchmark\n\n8-20 tables\n")
    page = tmp_path / "benchmarks.md"
    page.write_text(HAND_BEFORE + section("serving", "3-48 tables\n") + HAND_AFTER)
    suite.main(["--quick", "--servers", "mmserve", "--words", "8", "20", "--output", str(page)])
    assert [args.section for args in runs] == ["serving-8-20-words"]
    text = page.read_text()
    assert section("serving", "3-48 tables\n") in text and "8-20 tables" in text
    assert text.index("8-20 tables") > text.index(begin_marker("serving-8-20-words"))
    assert suite.parse_args(["--words", "8", "20"]).plot.name == "benchmarks-8-20-words.png"
    assert suite.parse_args([]).plot.name == "benchmarks.png"
    with pytest.raises(SystemExit):
        suite.parse_args(["--words", "20", "8"])
    assert {len(text.split()) for text in embed_texts(200, words=(8, 20))} == set(range(8, 21))


def test_the_naive_limit_pads_and_runs_embeddings_only() -> None:
    from bench.servers import specs

    naive = specs("cpu")["limit-naive"]
    assert not naive.http and naive.command == ("--naive",)
    plan = suite.Suite.__new__(suite.Suite)
    plan.args = suite.parse_args(["--endpoints", "/embed", "/caption"])
    plan.lua = {}
    assert suite.Suite._endpoints(plan, naive) == ["/embed"]
    assert suite.Suite._endpoints(plan, specs("cpu")["limit"]) == ["/embed", "/caption"]
