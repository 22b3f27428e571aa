"""`fourmica-x402 bench` runs, compares against eth-account, and reports ratios."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fourmica_x402.cli import main


def test_bench_json_reports_ratios_against_a_same_run_baseline() -> None:
    args = ["bench", "--quick", "--json", "--only", "recover", "--only", "P6", "--only", "P2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert set(rows) == {"recover", "P6", "P2"}
    for row in rows.values():
        assert row["ours"] > 0 and row["baseline"] > 0
        assert abs(row["ratio"] - row["ours"] / row["baseline"]) < 1e-9


def test_bench_table_and_unknown_name() -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["bench", "--quick", "--only", "recover"])
    assert table.exit_code == 0 and "recover" in table.output
    bad = runner.invoke(main, ["bench", "--only", "nope"])
    assert bad.exit_code == 2 and "unknown benchmark" in bad.output


def test_paid_request_overhead_is_measured_through_real_adapters() -> None:
    args = ["bench", "--quick", "--json", "--only", "P1-asgi", "--only", "P1-wsgi"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for row in json.loads(result.output):
        assert row["notes"]["paid_us"] > row["baseline"] > 0  # paid costs more than bare
        assert abs(row["ours"] - (row["notes"]["paid_us"] - row["baseline"])) < 1e-6


def test_bench_cycle_close_runs_on_real_tables() -> None:
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", "--only", "P3"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["id"] == "P3" and row["ours"] > 0 and row["notes"]["guarantees"] == 100_000


@pytest.mark.slow
def test_http_benchmarks_run_real_servers() -> None:
    args = ["bench", "--quick", "--json", "--only", "P4-asgi", "--only", "P4-wsgi"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert set(rows) == {"P4-asgi", "P4-wsgi"}
    for row in rows.values():  # every request got its 200 (the bench asserts it) and was timed
        assert row["ours"] > 0 and row["baseline"] > 0 and row["notes"]["requests"] == 300
