"""`fourmica-x402 bench` runs, compares against eth-account, and reports ratios."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fourmica_x402.cli import main


def test_bench_json_reports_ratios_against_a_same_run_baseline() -> None:
    args = ["bench", "--quick", "--json", "--only", "recover", "--only", "P6", "--only", "P2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"recover", "P6", "P2"}
    for row in rows.values():
        assert row["ours"] > 0 and row["baseline"] > 0
        assert abs(row["ratio"] - row["ours"] / row["baseline"]) < 1e-9
    assert "pip install" not in result.stderr  # eth-account is installed: no note


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
    for row in json.loads(result.stdout):
        assert row["notes"]["paid_us"] > row["baseline"] > 0  # paid costs more than bare
        assert abs(row["ours"] - (row["notes"]["paid_us"] - row["baseline"])) < 1e-6


def test_bench_cycle_close_runs_on_real_tables() -> None:
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", "--only", "P3"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["id"] == "P3" and row["ours"] > 0 and row["notes"]["guarantees"] == 100_000


@pytest.mark.slow
def test_http_benchmarks_run_real_servers() -> None:
    args = ["bench", "--quick", "--json", "--only", "P4-asgi", "--only", "P4-wsgi"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"P4-asgi", "P4-wsgi"}
    for row in rows.values():  # every request got its 200 (the bench asserts it) and was timed
        assert row["ours"] > 0 and row["baseline"] > 0 and row["notes"]["requests"] == 300


def _rows(result: Any) -> dict[str, dict[str, Any]]:
    """The JSON rows (stdout only: the progress and skip lines go to stderr)."""
    assert result.exit_code == 0, result.output
    return {row["id"]: row for row in json.loads(result.stdout)}


def test_cpu_per_paid_request_is_measured_on_the_fastapi_example() -> None:
    result = CliRunner().invoke(main, ["bench", "--only", "P7", "--quick", "--json"])
    (row,) = _rows(result).values()
    assert row["id"] == "P7" and row["unit"] == "µs CPU" and row["target"] == "≤ 1.5"
    assert row["ours"] > 0 and row["baseline"] > 0 and isinstance(row["met"], bool)
    assert abs(row["ratio"] - row["ours"] / row["baseline"]) < 1e-9
    assert row["notes"]["requests"] == 300
    assert "P7" in result.stderr  # the progress line


def test_vs_official_skips_in_one_line_without_the_official_packages(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-venv"
    args = ["bench", "--only", "P5", "--quick", "--json"]
    result = CliRunner(env={"FOURMICA_INTEROP_VENV": str(missing)}).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    started, line = result.stderr.strip().splitlines()  # its progress line, then why it skipped
    assert started.startswith("bench: [1/1] P5: ")
    assert line.startswith("bench: P5 skipped: FOURMICA_INTEROP_VENV=") and "Traceback" not in line


def test_bench_says_what_it_runs_on_stderr_and_keeps_stdout_json() -> None:
    result = CliRunner().invoke(
        main, ["bench", "--only", "recover", "--only", "P6", "--quick", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in json.loads(result.stdout)] == ["recover", "P6"]  # nothing else
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("bench: [1/2] recover: Hash + recover one G-v1 guarantee"), lines
    assert lines[1].startswith("bench: [1/2] recover done in ") and lines[1].endswith(" s")
    assert lines[2].startswith("bench: [2/2] P6: buyer signing one G-v1 guarantee"), lines
    assert lines[3].startswith("bench: [2/2] P6 done in ") and len(lines) == 4, lines
    table = CliRunner().invoke(main, ["bench", "--only", "recover", "--quick"])
    assert table.exit_code == 0 and "bench: [1/1] recover done" in table.stderr
    assert "bench:" not in table.stdout and "recover" in table.stdout


def test_bench_names_the_extra_when_eth_account_is_missing(tmp_path: Path) -> None:
    # A fresh interpreter where eth_account cannot be imported, as without the bench extra.
    args = ["bench", "--quick", "--json", "--only", "recover", "--only", "P6"]
    code = f"import sys; sys.modules['eth_account'] = None; from fourmica_x402.cli import main; main({args!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = json.loads(out.stdout)
    assert [(row["id"], row["baseline"]) for row in rows] == [("recover", None), ("P6", None)]
    assert out.stderr.strip().splitlines()[-1] == (
        "bench: no baseline for recover, P6: eth-account is not installed: "
        'pip install "fourmica-x402[bench]"'
    )


@pytest.mark.slow
@pytest.mark.interop
def test_vs_official_compares_paid_throughput_on_one_facilitator(
    environment_missing: Any,
) -> None:
    from fourmica_x402.adapters import _bench

    try:  # built once from PyPI and cached (the interop tests share it)
        _bench.official_python()
    except _bench.Skipped as exc:
        environment_missing(str(exc))  # skips here, fails under CI=true
    result = CliRunner().invoke(main, ["bench", "--only", "P5", "--quick", "--json"])
    rows = _rows(result)
    assert set(rows) == {"P5-embedded", "P5-remote"}, result.stderr
    baseline = rows["P5-embedded"]["baseline"]
    for row in rows.values():  # every request got its 200 and its guarantee (the bench checks)
        assert row["unit"] == "req/s" and row["ours"] > 0 and row["baseline"] == baseline > 0
        assert abs(row["ratio"] - row["ours"] / row["baseline"]) < 1e-9
        assert row["notes"]["requests"] == 200 and isinstance(row["met"], bool)
        # each process's CPU per paid request, idle to idle: a seller never costs nothing
        assert row["notes"]["seller_cpu_us"] > 0 and row["notes"]["official_seller_cpu_us"] > 0
    # the facilitator worked for both sellers that used it
    assert rows["P5-remote"]["notes"]["serve_cpu_us"] > 0
    assert rows["P5-remote"]["notes"]["serve_cpu_us_for_official"] > 0
    assert rows["P5-embedded"]["target"] == "≥ 6×" and rows["P5-remote"]["target"] == "≥ 1.5×"


def test_scale_out_skips_in_one_line_without_a_postgres_url() -> None:
    args = ["bench", "--only", "P8", "--quick", "--json"]
    result = CliRunner(env={"FOURMICA_BENCH_POSTGRES_URL": None}).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    started, line = result.stderr.strip().splitlines()  # its progress line, then why it skipped
    assert started.startswith("bench: [1/1] P8: Core acceptances/s on one PostgreSQL server")
    assert line.startswith(
        "bench: P8 skipped: needs a PostgreSQL server: set FOURMICA_BENCH_POSTGRES_URL"
    ), line


@pytest.mark.postgres
@pytest.mark.slow
def test_scale_out_reports_acceptances_per_second_from_1_2_and_4_processes(
    _postgres_admin_url: str,
) -> None:
    import psycopg

    def scratch_databases() -> set[str]:
        with psycopg.connect(_postgres_admin_url, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database").fetchall()
        return {name for (name,) in rows if name.startswith("fx_bench_")}

    before = scratch_databases()
    env = {"FOURMICA_BENCH_POSTGRES_URL": _postgres_admin_url}
    result = CliRunner(env=env).invoke(main, ["bench", "--only", "P8", "--quick", "--json"])
    (row,) = _rows(result).values()
    assert row["id"] == "P8" and row["unit"] == "/s" and row["target"] == "≥ 1.7"
    notes = row["notes"]
    curve = notes["per_second"]
    assert set(curve) == {"1", "2", "4"} and all(rate > 0 for rate in curve.values())
    assert set(notes["worker_cpu_us"]) == set(curve)
    assert all(us > 0 for us in notes["worker_cpu_us"].values())
    assert row["ours"] == curve["2"] and row["baseline"] == curve["1"]
    assert abs(row["ratio"] - curve["2"] / curve["1"]) < 1e-9
    assert abs(notes["ratio_4_to_1"] - curve["4"] / curve["1"]) < 1e-9
    assert isinstance(row["met"], bool)
    # Every guarantee was accepted and stored and the audit held (the bench checks), and the
    # output says what ran: worker processes with an embedded Core, no HTTP.
    assert notes["acceptances"] == 1_200 and notes["buyers"] == 16
    assert "worker processes" in notes["mode"] and "no HTTP" in row["title"]
    assert "P8: 4 worker process(es)" in result.stderr
    # What a commit waits for on that server is part of the figure: reported as the server
    # says, and a server without fsync is named in the title.
    with psycopg.connect(_postgres_admin_url, autocommit=True) as conn:
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
    assert notes["server"]["fsync"] == fsync and notes["server"]["synchronous_commit"] == sync
    assert ("fsync off" in row["title"]) == (fsync == "off")
    assert scratch_databases() <= before  # each scratch database was dropped


def test_paid_request_floor_is_a_signature_and_one_durable_write(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", "--only", "P1-floor"])
    (row,) = _rows(result).values()
    notes = row["notes"]
    assert row["id"] == "P1-floor" and notes["recover_us"] > 0 and notes["write_us"] > 0
    assert abs(row["ours"] - (notes["recover_us"] + notes["write_us"])) < 1e-6
    assert "P1-floor: µs of the least any paid request must do" in result.stderr
    # The write it times does the work a seller's must: a lock, and a replay refused.
    from fourmica_x402.bench.floor import _LeastWrite

    write = _LeastWrite(str(tmp_path / "floor.db"), "0xabc")
    for _ in range(5):
        write()
    assert write.db.execute("SELECT locked FROM positions").fetchone() == (5,)
    assert write.db.execute("SELECT COUNT(*) FROM guarantees").fetchone() == (5,)
    write.req -= 1  # the same tab and request id again
    with pytest.raises(sqlite3.IntegrityError):
        write()
    write.db.execute("ROLLBACK")
    assert write.db.execute("SELECT locked FROM positions").fetchone() == (5,)


def test_certificate_signature_is_compared_with_blst_on_the_same_bytes() -> None:
    """blspy (the Core's signer) against pyblst: the same signature, and how much of the
    serving thread's speed each leaves while a thread signs."""
    rows = _rows(CliRunner().invoke(main, ["bench", "--quick", "--json", "--only", "certify"]))
    row = rows["certify"]
    assert row["ours"] > 0 and row["baseline"] > 0
    notes = row["notes"]
    assert notes["same_signature"] is True  # deterministic BLS: py_ecc verifies both alike
    for share in (notes["gil_share_kept_blspy"], notes["gil_share_kept_pyblst"]):
        assert 0 < share < 2
