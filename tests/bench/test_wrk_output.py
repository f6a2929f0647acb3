"""Reading wrk's output, and the tables made from it (no wrk needed)."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime

import pytest

from bench import wrk
from bench.measurements import Cell, medians
from bench.report import markdown

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:8000
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.00ms    1.00ms  20.00ms   90.00%
  120 requests in 3.00s, 1.00MB read
Requests/sec:     40.00
bench: socket_errors 1 0 0 2
bench: window_s 2.000
bench: thread ok=3 status_errors=1 mismatches=0
bench: example status 503: {"error": "loading"}
bench: latency_ms 10.000 20.000 30.000
bench: thread ok=1 status_errors=0 mismatches=2
bench: latency_ms 40.000
"""


def test_the_parser_reads_the_script_lines_of_wrk_output() -> None:
    result = wrk.parse_output(WRK_OUTPUT)
    assert (result.ok, result.status_errors, result.mismatches, result.socket_errors) == (4, 1, 2, 3)
    assert result.errors == 6
    assert result.requests_per_s == 2.0
    assert result.latencies_ms == [10.0, 20.0, 30.0, 40.0]
    assert result.percentile_ms(50) == 25.0
    assert result.examples == ['status 503: {"error": "loading"}']


def test_the_parser_refuses_output_without_the_script_lines() -> None:
    with pytest.raises(ValueError, match="no results"):
        wrk.parse_output("PANIC: unprotected error in call to Lua API (verify.lua:12: attempt to index nil)\n")


def cell(server: str, requests_per_s: float, run: int = 0, load: float = 32) -> Cell:
    return Cell(server, "/embed", "closed", load, requests_per_s, 10.0, 20.0, 30.0, 0, run)


def test_medians_over_runs_and_the_ratio_to_mmserve() -> None:
    cells = [cell("mmserve", 100.0, 0), cell("mmserve", 300.0, 1), cell("mmserve", 200.0, 2), cell("litserve", 100.0)]
    merged = {c.server: c for c in medians(cells)}
    assert merged["mmserve"].requests_per_s == 200.0 and merged["mmserve"].run == 3
    args = argparse.Namespace(
        device="cpu", smoke=True, warmup_s=1.0, duration_s=2.0, repeat=3, both_orders=True, tolerance=1e-3
    )
    document = markdown(cells, [], [], args, "python bench/suite.py --quick", datetime(2026, 1, 1, tzinfo=UTC))
    assert "Smoke run, not a measurement" in document
    assert "| LitServe, same batch size and wait | 32 | 100.0 | 10.0 | 20.0 | 30.0 | 0 | 0.50 |" in document
    assert "python bench/suite.py --quick" in document


def test_a_cell_with_no_answers_has_no_percentiles() -> None:
    result = wrk.WrkResult(0, 5, 0, 0, 1.0, [])
    assert math.isnan(result.percentile_ms(99)) and result.errors == 5
