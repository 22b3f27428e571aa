"""`fourmica-x402`: every bad input ends in one ``Error: …`` line and a non-zero exit, never a
traceback; money is shown in dollars, times in UTC. Real SQLite files, real sockets, no mocks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from fourmica_x402.cli import main
from fourmica_x402.cli._args import SETTINGS, parse_duration
from fourmica_x402.client import SpendingPolicy
from fourmica_x402.core import Core
from fourmica_x402.networks import default_asset, format_amount, parse_money
from fourmica_x402.testing import NETWORK, TEST_KEYS, TestBuyer

KEY = TEST_KEYS[0]  # a throwaway test key
ADDRESS = "0x" + "11" * 20
USDC = default_asset(NETWORK)
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
# Nothing from the caller's shell may change what the CLI is given.
CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "FOURMICA_X402_DB",
        "FOURMICA_X402_KEY",
        "FOURMICA_X402_API_KEY",
        "FOURMICA_X402_SELLER_KEYS",
        "FOURMICA_X402_TAB_TTL",
        "FOURMICA_X402_VALIDATION_TIMEOUT",
        "FOURMICA_X402_CYCLE_WINDOW",
        "FOURMICA_X402_RESOLUTION_DELAY",
        "FOURMICA_X402_PAYMENT_WINDOW",
        "FOURMICA_X402_FINALITY",
        "FOURMICA_X402_WITHDRAWAL_GRACE",
    )
}


def cli(*args: str, columns: int = 200, env: dict[str, str] | None = None) -> Result:
    environment = {**CLEAN_ENV, "COLUMNS": str(columns), **(env or {})}
    return CliRunner(env=environment).invoke(main, list(args))


def refused(result: Result, code: int, *needles: str) -> str:
    """Assert a clean refusal: exit ``code``, no traceback, one ``Error:`` line (returned) last."""
    everything = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r}\n{everything}"
    )
    assert "Traceback" not in everything, everything
    assert result.exit_code == code, (result.exit_code, everything)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The seller's database, made as its app makes it: the Core commands refuse a missing one."""
    url = f"sqlite:///{tmp_path / 'core.db'}"
    Core(url).close()
    return url


@pytest.fixture
def closed_url() -> Iterator[str]:
    """An http URL on loopback where nothing listens (bound, not listening: refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/premium"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something already listens on: a `serve` that got this far cannot start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


# -- the reported inputs, one by one ------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "soon"])
def test_pay_refuses_a_bad_timeout(closed_url: str, timeout: str) -> None:
    refused(cli("pay", closed_url, "--key", KEY, "--timeout", timeout), 2, "'--timeout'")


@pytest.mark.parametrize(
    ("price", "says"),
    [
        ("cheap", "'cheap' is not a number"),
        ("$1e30", "exponent"),
        ("-1", "more than zero"),
        ("$0", "more than zero"),
        ("", "empty"),
    ],
)
def test_pay_refuses_a_bad_max_price(closed_url: str, price: str, says: str) -> None:
    refused(cli("pay", closed_url, "--key", KEY, "--max-price", price), 2, "'--max-price'", says)


def test_pay_refuses_a_receipts_ledger_it_cannot_open(tmp_path: Path, closed_url: str) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "r.db"
    refused(cli("pay", closed_url, "--key", KEY, "--receipts", str(missing)), 2, "'--receipts'")
    assert not missing.parent.exists()
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database, and long enough to be read as one " * 4)
    refused(cli("pay", closed_url, "--key", KEY, "--receipts", str(not_sqlite)), 2, "ledger")
    refused(cli("pay", closed_url, "--key", KEY, "--receipts", str(tmp_path)), 2, "ledger")
    refused(cli("pay", closed_url, "--key", KEY, "--receipts", ""), 2, "'--receipts'")


@pytest.mark.parametrize("command", [["cycle", "close"], ["serve"], ["deposit", ADDRESS, "$1"]])
def test_an_unknown_network_is_refused(db: str, command: list[str]) -> None:
    refused(cli(*command, "--db", db, "--network", "foo"), 2, "'--network'", "unknown network")


@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf", "often"])
def test_cycle_run_refuses_a_bad_interval(db: str, interval: str) -> None:
    refused(cli("cycle", "run", "--db", db, "--interval", interval, "--once"), 2, "'--interval'")


def test_cycle_run_once_still_runs(db: str) -> None:
    result = cli("cycle", "run", "--db", db, "--interval", "0.5", "--once")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("0x1234", "this one is 2 bytes"),
        (ADDRESS, "that is an address, not a private key"),
        ("0x" + "ab" * 33, "this one is 33 bytes"),
        ("0x" + "zz" * 32, "not a hex private key"),
        ("0x" + "0" * 64, "not a valid secp256k1 private key"),
    ],
)
def test_pay_refuses_anything_but_a_32_byte_key(closed_url: str, key: str, says: str) -> None:
    line = refused(cli("pay", closed_url, "--key", key), 2, "'--key'", says)
    assert key[2:] not in line  # the key is never echoed


@pytest.mark.parametrize(("key", "says"), [("0xab", "is 1 byte"), ("0xa", "is 1 hex digit")])
def test_a_one_byte_or_one_digit_key_is_told_in_the_singular(
    closed_url: str, key: str, says: str
) -> None:
    line = refused(cli("pay", closed_url, "--key", key), 2, "'--key'", says)
    assert f"{says}s" not in line


def test_a_key_from_the_environment_is_checked_too(closed_url: str) -> None:
    result = CliRunner(env={**CLEAN_ENV, "FOURMICA_X402_KEY": "0x1234"}).invoke(
        main, ["pay", closed_url]
    )
    refused(result, 2, "environment variable FOURMICA_X402_KEY", "32 bytes")


def test_pay_refuses_a_bad_url_method_and_body(closed_url: str) -> None:
    refused(cli("pay", "not a url", "--key", KEY), 2, "URL", "http(s)://")
    refused(cli("pay", "ftp://example.com/x", "--key", KEY), 2, "URL")
    refused(cli("pay", closed_url, "--key", KEY, "--method", "GE T"), 2, "'--method'")
    refused(cli("pay", closed_url, "--key", KEY, "--data", "{bad"), 2, "'--data'", "not JSON")
    refused(cli("pay", closed_url, "--key", KEY, "--data", "1e999"), 2, "'--data'")
    refused(cli("pay", closed_url, "--key", KEY, "--data", "NaN"), 2, "'--data'")
    refused(cli("pay", closed_url, "--key", KEY), 1, "request failed")


@pytest.mark.parametrize("url", ["not a url", "core.db", "sqlite://", "sqlite:///", "mysql://h/d"])
def test_db_must_be_a_sqlite_or_postgresql_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    refused(cli("positions", "--db", url), 2, "'--db'", "sqlite:///")
    assert list(tmp_path.iterdir()) == []  # no file named "not a url" (or anything else)


def test_a_sqlite_db_url_with_a_query_is_refused(tmp_path: Path) -> None:
    """``--db sqlite:///x.db?mode=ro`` named a file ``x.db?mode=ro``: with ``--create``, a new
    and empty Core."""
    url = f"sqlite:///{tmp_path}/x.db?mode=ro"
    refused(cli("positions", "--db", url), 2, "'--db'", "query")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_db_is_refused_not_taken_as_memory(tmp_path: Path) -> None:
    refused(cli("positions", "--db", ""), 2, "'--db'", "empty")
    result = CliRunner(env={**CLEAN_ENV, "FOURMICA_X402_DB": " "}).invoke(main, ["positions"])
    refused(result, 2, "'--db'", "empty")


def test_a_refused_db_url_does_not_show_its_password() -> None:
    line = refused(cli("positions", "--db", "mysql://app:hunter2@db/core"), 2, "'--db'")
    assert "hunter2" not in line and "app:***@db" in line


def test_a_password_in_the_urls_query_or_a_conninfo_is_masked_too() -> None:
    from fourmica_x402.cli._args import mask_password, safe_url

    for url in (
        "postgresql://app@db/core?sslmode=require&password=Sup3r-S3cret",
        "host=db password=Sup3r-S3cret dbname=core",
        "host=db password='Sup3r-S3cret' dbname=core",
    ):
        assert "Sup3r" not in safe_url(url) and "password=***" in safe_url(url), url
        said = mask_password(f"Error: {url}: token Sup3r-S3cret refused", url)
        assert "Sup3r" not in said, said


def test_postgres_password_is_masked_only_where_it_is_written() -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as sock:  # a port nothing listens on: connection refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        line = refused(cli("positions", "--db", f"postgres://u:p@127.0.0.1:{port}/db"), 1)
    assert "***ort" not in line and f"port {port}" in line, line
    assert ":p@" not in line and "u@127.0.0.1" in line


@pytest.mark.parametrize(
    ("amount", "says"),
    [
        ("$1e30", "uses exponent notation"),
        ("1E5", "uses exponent notation"),
        ("cheap", "amount 'cheap' is not a number"),
        ("$0", "must be more than zero"),
        ("$0.0000001", "more decimals than USDC supports (6)"),
        ("$10000000000000", "too large: at most $9,223,372,036,854.775807"),
        ("0u", "must be 1 to 9223372036854775807 atomic units"),
    ],
)
def test_deposit_amounts_are_called_amounts(db: str, amount: str, says: str) -> None:
    line = refused(cli("deposit", "--db", db, ADDRESS, amount), 2, "AMOUNT", says)
    assert "price" not in line and "positive integer of atomic units" not in line


def test_deposit_refuses_a_bad_address_and_asset(db: str) -> None:
    refused(cli("deposit", "--db", db, "0x1234", "$1"), 2, "ADDRESS", "not an address")
    key = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"  # TEST key
    for result in (  # a key pasted where an address goes is never echoed
        cli("deposit", "--db", db, key, "$1"),
        cli("deposit", "--db", db, "--asset", key, ADDRESS, "$1"),
    ):
        assert result.exit_code == 2 and key[8:] not in result.output, result.output
    refused(cli("deposit", "--db", db, "--asset", "usdc", ADDRESS, "$1"), 2, "'--asset'")


def test_valid_deposits_still_work(db: str) -> None:
    for amount in ("$5", "5.00", "5000000u", "$1,000.50"):
        result = cli("deposit", "--db", db, ADDRESS, amount)
        assert result.exit_code == 0, result.output
    position = json.loads(result.output)
    assert position["collateral"] == 3 * 5_000_000 + 1_000_500_000  # JSON stays atomic


# -- missing optional frameworks (a fresh interpreter where the package cannot be imported) --


def _without(modules: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter where ``modules`` cannot be imported, as when the
    extra that installs them was left out."""
    hide = "".join(f"sys.modules[{m!r}] = None; " for m in modules)
    code = f"import sys; {hide}from fourmica_x402.cli import main; main({list(args)!r})"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize("missing", ["starlette", "django", "uvicorn"])
def test_demo_names_the_extra_to_install(tmp_path: Path, missing: str) -> None:
    out = _without([missing], "demo", "--quick", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"Error: the demo needs every framework ({missing} is not installed): "
        'pip install "fourmica-x402[all]"'
    )


@pytest.mark.parametrize(("name", "missing"), [("P4-asgi", "uvicorn"), ("P4-wsgi", "gunicorn")])
def test_bench_names_the_missing_server(tmp_path: Path, name: str, missing: str) -> None:
    out = _without([missing], "bench", "--quick", "--only", name, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("Error:") and missing in line, line
    assert 'pip install "fourmica-x402[server]"' in line and "did not start" not in line


def test_serve_without_the_server_extra(tmp_path: Path, busy_port: int) -> None:
    db = f"sqlite:///{tmp_path / 'core.db'}"
    out = _without(["uvicorn"], "serve", "--db", db, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert 'pip install "fourmica-x402[server]"' in out.stderr.strip().splitlines()[-1]


def test_serve_says_when_its_port_is_taken(db: str, busy_port: int) -> None:
    refused(cli("serve", "--db", db, "--port", str(busy_port)), 1, "cannot listen", str(busy_port))


def test_serve_takes_an_http_public_url_only(db: str, busy_port: int) -> None:
    for bad in ("ftp://core.example", "core.example", "https://", "http://[::1"):
        refused(cli("serve", "--db", db, "--public-url", bad), 2, "'--public-url'")
    # a URL no buyer could reach: a port past 65535, an address or name no request takes
    # (the busy port makes a serve that took it stop at once)
    for bad in ("http://core.example:99999", "http://256.1.1.1", "http://a..b"):
        args = ("serve", "--db", db, "--port", str(busy_port), "--public-url", bad)
        refused(cli(*args), 2, "'--public-url'")


def test_serve_refuses_an_empty_api_key(db: str) -> None:
    # An empty operator key would let any request through as the operator.
    refused(cli("serve", "--db", db, "--api-key", ""), 2, "'--api-key'")
    refused(cli("serve", "--db", db, "--api-key", "two words"), 2, "'--api-key'")


# -- money in dollars, addresses in full, times in UTC ------------------------------------------


def test_positions_shows_dollars_and_json_keeps_atomic_units(db: str) -> None:
    assert cli("deposit", "--db", db, ADDRESS, "5000000u").exit_code == 0
    table = cli("positions", "--db", db, columns=200)
    assert table.exit_code == 0, table.output
    assert "$5.00" in table.output and "5,000,000" not in table.output
    assert ADDRESS in table.output
    rows = json.loads(cli("positions", "--db", db, "--json").output)
    assert rows[0]["collateral"] == 5_000_000 and rows[0]["capacity"] == 5_000_000


@pytest.mark.parametrize("columns", [30, 60, 80, 120])
def test_positions_never_cuts_an_address(db: str, columns: int) -> None:
    addresses = [TestBuyer.new().address for _ in range(2)]
    for address in addresses:
        assert cli("deposit", "--db", db, address, "$1234.5").exit_code == 0
    out = cli("positions", "--db", db, columns=columns)
    assert out.exit_code == 0, out.output
    assert "…" not in out.output
    for address in addresses:
        assert address in out.output  # on one line, whole
    assert out.output.count("$1,234.50") == 4  # collateral and capacity of each


def test_withdrawals_show_utc_times_and_say_until_when(db: str) -> None:
    assert cli("deposit", "--db", db, ADDRESS, "$5").exit_code == 0
    asked = cli("withdraw", "--db", db, ADDRESS, "$1")
    assert asked.exit_code == 0, asked.output
    withdrawal = json.loads(asked.output)
    assert ISO_UTC.fullmatch(withdrawal["requested_at"]), withdrawal
    assert ISO_UTC.fullmatch(withdrawal["available_at"]), withdrawal
    assert withdrawal["amount"] == 1_000_000 and withdrawal["finished_at"] is None
    early = refused(cli("withdraw", "--db", db, "--finalize", "1"), 1, "grace period", "until")
    assert withdrawal["available_at"] in early and "from now" in early
    cancelled = json.loads(cli("withdraw", "--db", db, "--cancel", "1").output)
    assert cancelled["status"] == "cancelled" and ISO_UTC.fullmatch(cancelled["finished_at"])
    refused(cli("withdraw", "--db", db, "--cancel", "1"), 1, "withdrawal is cancelled")
    refused(cli("withdraw", "--db", db, "--finalize", "99"), 1, "no withdrawal 99")
    refused(cli("withdraw", "--db", db, "--finalize", "0"), 2, "'--finalize'")
    refused(cli("withdraw", "--db", db), 2, "give ADDRESS AMOUNT")
    refused(cli("withdraw", "--db", db, "--finalize", "1", "--cancel", "1"), 2, "not both")


def test_withdraw_help_says_its_amount_is_in_whole_tokens_as_deposit_takes_it(db: str) -> None:
    """``withdraw --help`` said "amounts in atomic units": a user who read it and asked for
    ``withdraw ADDRESS 500000`` (half a dollar) requested $500 000; the AMOUNT is read as
    ``deposit`` reads it (README.md, "Five minutes", step 3)."""
    text = " ".join(cli("withdraw", "--help", columns=400).output.split())
    assert "amounts in atomic units" not in text, text
    assert "AMOUNT like '$1'" in text and "'1000000u' for atomic units" in text, text
    assert cli("deposit", "--db", db, ADDRESS, "$5").exit_code == 0
    asked = json.loads(cli("withdraw", "--db", db, ADDRESS, "1000000u").output)
    assert asked["amount"] == 1_000_000  # what the help says: atomic with 'u'
    asked = json.loads(cli("withdraw", "--db", db, ADDRESS, "$1").output)
    assert asked["amount"] == 1_000_000


def test_serve_help_names_the_variables_its_list_options_read() -> None:
    """``--seller-key`` and ``--allowed-host`` said "the environment variable takes them
    space-separated" without naming it (nor did docs/operations.md for the host names)."""
    text = " ".join(cli("serve", "--help", columns=400).output.split())
    for variable in (
        "FOURMICA_X402_API_KEY",
        "FOURMICA_X402_SELLER_KEYS",
        "FOURMICA_X402_PUBLIC_URL",
        "FOURMICA_X402_ALLOWED_HOSTS",
    ):
        assert f"[env var: {variable}]" in text, variable
    docs = " ".join((Path(__file__).parents[2] / "docs" / "operations.md").read_text().split())
    assert "FOURMICA_X402_ALLOWED_HOSTS" in docs and "FOURMICA_X402_PUBLIC_URL" in docs


def test_cycle_close_shows_utc_times(db: str) -> None:
    closed = cli("cycle", "close", "--db", db)
    assert closed.exit_code == 0, closed.output
    cycle = json.loads(closed.output)["cycle"]
    assert ISO_UTC.fullmatch(cycle["opened_at"]) and ISO_UTC.fullmatch(cycle["closed_at"])


def test_policy_refusals_speak_dollars() -> None:
    seller, asset = "0x" + "22" * 20, USDC.address
    policy = SpendingPolicy(max_per_request="$0.001")
    decision = policy.check(seller=seller, url="u", amount=10_000, asset=asset, network=NETWORK)
    assert decision.detail == (
        "price $0.01 (10000 units) is over the per-request cap $0.001 (1000 units)"
    )
    policy = SpendingPolicy(per_hour=50_000)
    for _ in range(2):
        ok = policy.check(seller=seller, url="u", amount=20_000, asset=asset, network=NETWORK)
        assert ok.reservation is not None
        policy.commit(ok.reservation)
    decision = policy.check(seller=seller, url="u", amount=20_000, asset=asset, network=NETWORK)
    assert decision.detail == (
        "the per hour budget $0.05 (50000 units) would be exceeded ($0.04 spent, $0.02 more asked)"
    )
    policy = SpendingPolicy(max_per_seller="$0.03")
    ok = policy.check(seller=seller, url="u", amount=20_000, asset=asset, network=NETWORK)
    assert ok.reservation is not None
    decision = policy.check(seller=seller, url="u", amount=20_000, asset=asset, network=NETWORK)
    assert decision.detail.startswith("the per-seller cap $0.03 (30000 units) would be exceeded")
    with policy.task("job", budget="$0.0001"):
        decision = policy.check(seller="0x" + "33" * 20, url="u", amount=1_000, asset=asset,
                                network=NETWORK)  # fmt: skip
    assert decision.detail == (
        "task 'job' budget $0.0001 (100 units) would be exceeded ($0.00 spent, $0.001 more asked)"
    )
    unknown = SpendingPolicy(max_per_request=500).check(
        seller=seller, url="u", amount=900, asset="0x" + "44" * 20, network=NETWORK
    )
    assert decision.outcome == unknown.outcome == "budget_exhausted"
    assert unknown.detail == "price 900 atomic units is over the per-request cap 500 atomic units"


def test_format_amount_and_parse_money() -> None:
    assert format_amount(5_000_000, USDC) == "$5.00"
    assert format_amount(10_000, USDC) == "$0.01"
    assert format_amount(1, USDC) == "$0.000001"
    assert format_amount(1_234_567_890, USDC) == "$1,234.56789"
    assert format_amount(-1_500_000, USDC) == "-$1.50"
    assert format_amount(10_000, USDC, units=True) == "$0.01 (10000 units)"
    assert format_amount(1, USDC, units=True) == "$0.000001 (1 unit)"  # --max-price 1u
    assert format_amount(7, None) == "7 atomic units"
    assert parse_money("$5", USDC) == 5_000_000
    assert parse_money("1,000.25", USDC) == 1_000_250_000
    assert parse_money(" $ 0.5 ", USDC) == 500_000
    for bad in ("1e5", "$1E-3", "inf", "NaN", "0x10", "1,00", "+1", "", "$", "١"):
        with pytest.raises(Exception, match="amount"):
            parse_money(bad, USDC)


# -- a paid request through the real entry point, refused by --max-price -----------------------


@contextlib.contextmanager
def _seller(db: str) -> Iterator[str]:
    """A WSGI seller (the repository's WSGI middleware) on loopback, priced at $0.01."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"premium": true}']

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    config = PaymentConfig(pay_to="0x" + "22" * 20, routes={"GET /premium": "$0.01"}, core=db)
    server = make_server("127.0.0.1", 0, PaymentMiddleware(app, config=config), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/premium"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_pay_refusal_and_payment_in_dollars(tmp_path: Path, db: str) -> None:
    buyer = TestBuyer.from_key(KEY)
    assert cli("deposit", "--db", db, buyer.address, "$1").exit_code == 0
    ledger = tmp_path / "receipts.db"
    with _seller(db) as url:
        capped = cli("pay", url, "--key", KEY, "--max-price", "$0.001")
        assert capped.exit_code == 1 and "Traceback" not in capped.output, capped.output
        out = json.loads(capped.stdout)
        assert out["paid"] is False and out["error"] == "budget_exhausted"
        assert "$0.01 (10000 units)" in out["message"] and "$0.001" in out["message"]
        paid = cli("pay", url, "--key", KEY, "--max-price", "$0.05", "--receipts", str(ledger))
        assert paid.exit_code == 0, paid.output
        result = json.loads(paid.stdout)
        assert result["status"] == 200 and result["receipt"]["outcome"] == "paid"
    assert ledger.exists()


# -- the operator's settings (docs/operations.md, "Operator settings") ---------------------------


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_durations_take_seconds_or_a_unit() -> None:
    assert parse_duration("90") == 90 and parse_duration("0.5") == 0.5
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900
    assert parse_duration("6h") == 21_600 and parse_duration("22d") == 1_900_800
    assert parse_duration(" 1h30m ") == 5_400 and parse_duration("1.5H") == 5_400
    for bad in ("", "soon", "-1", "1e3", "0x10", "nan", "inf", "5y", "h", "1 h", "1h-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_every_setting_is_a_core_config_field_with_its_default_in_the_help() -> None:
    from dataclasses import fields

    from fourmica_x402.core import CoreConfig

    names = {f.name for f in fields(CoreConfig)}
    expected = {
        "tab_ttl": "1d",
        "validation_timeout": "1h",
        "cycle_window": "1d",
        "resolution_delay": "6h",
        "payment_window": "2h",
        "finality": "2h",
        "withdrawal_grace": "22d",
    }
    assert set(SETTINGS) == set(expected) <= names
    text = " ".join(cli("serve", "--help", columns=400).output.split())
    for name, default in expected.items():
        option, envvar = "--" + name.replace("_", "-"), "FOURMICA_X402_" + name.upper()
        assert option in text and f"env var: {envvar}; default: {default}]" in text, name
    assert "as long as the service runs" in text
    run_help = " ".join(cli("cycle", "run", "--help", columns=400).output.split())
    assert "--cycle-window" in run_help and "as long as this process runs" in run_help


def test_withdraw_takes_its_grace_period_from_the_option_or_the_environment(db: str) -> None:
    assert cli("deposit", "--db", db, ADDRESS, "$5").exit_code == 0

    def grace(*args: str, env: dict[str, str] | None = None) -> float:
        out = cli("withdraw", "--db", db, *args, ADDRESS, "$1", env=env)
        assert out.exit_code == 0, out.output
        withdrawal = json.loads(out.stdout)
        return _epoch(withdrawal["available_at"]) - _epoch(withdrawal["requested_at"])

    assert grace() == 22 * 86_400  # the Core's default
    assert grace("--withdrawal-grace", "2s") == 2
    assert grace(env={"FOURMICA_X402_WITHDRAWAL_GRACE": "15m"}) == 900
    assert grace("--withdrawal-grace", "0", env={"FOURMICA_X402_WITHDRAWAL_GRACE": "1h"}) == 0
    # Once its one-second grace period has passed, the withdrawal can be finalized.
    short = json.loads(cli("withdraw", "--db", db, "--withdrawal-grace", "1", ADDRESS, "$1").stdout)
    early = cli("withdraw", "--db", db, "--finalize", str(short["withdrawal_id"]))
    assert early.exit_code == 1 and "grace period" in early.stderr
    time.sleep(2)
    done = cli("withdraw", "--db", db, "--finalize", str(short["withdrawal_id"]))
    assert done.exit_code == 0 and json.loads(done.stdout)["status"] == "finalized", done.output


def test_cycle_close_uses_the_timetable_given(db: str) -> None:
    args = ["--cycle-window", "90s", "--resolution-delay", "1m", "--payment-window", "0"]
    closed = cli("cycle", "close", "--db", db, *args, "--finality", "5")
    assert closed.exit_code == 0, closed.output
    cycle = {
        k: _epoch(v)
        for k, v in json.loads(closed.stdout)["cycle"].items()
        if k.endswith(("_at", "pay_by"))
    }
    assert cycle["closes_at"] - cycle["opened_at"] == 90  # opened by this close
    assert cycle["resolve_at"] - cycle["closed_at"] == 60
    assert cycle["pay_by"] == cycle["resolve_at"] and cycle["final_at"] - cycle["pay_by"] == 5
    env = {"FOURMICA_X402_CYCLE_WINDOW": "2h", "FOURMICA_X402_RESOLUTION_DELAY": "3m"}
    again = cli("cycle", "close", "--db", db, env=env)
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)["cycle"]
    assert _epoch(second["resolve_at"]) - _epoch(second["closed_at"]) == 180
    core = Core(db)
    try:
        (opened,) = core.cycles(status="open")  # the next cycle: FOURMICA_X402_CYCLE_WINDOW
        assert opened.closes_at - opened.opened_at == 7_200
    finally:
        core.close()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--cycle-window", "soon", "is not a duration"),
        ("--cycle-window", "0", "must be above zero"),
        ("--cycle-window", "-1", "is not a duration"),
        ("--resolution-delay", "1e3", "is not a duration"),
        ("--payment-window", "nan", "is not a duration"),
        ("--finality", "99999d", "is longer than 3650d"),
        ("--finality", "", "is not a duration"),
    ],
)
def test_cycle_close_refuses_a_bad_duration(db: str, option: str, value: str, says: str) -> None:
    refused(cli("cycle", "close", "--db", db, option, value), 2, f"'{option}'", says)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--tab-ttl", "1.5", "must be whole seconds"),
        ("--tab-ttl", "0", "must be above zero"),
        ("--validation-timeout", "5y", "is not a duration"),
        ("--withdrawal-grace", "0x10", "is not a duration"),
        ("--seller-key", "tok", "no '=' between TOKEN and ADDRESS (expected TOKEN=0xADDRESS)"),
        ("--seller-key", f"={ADDRESS}", "the token is empty (expected"),
        ("--seller-key", "tok=0x12", "ADDRESS is not an address (expected"),
        ("--seller-key", f"to k={ADDRESS}", "the token must be printable ASCII"),
    ],
)
def test_serve_refuses_a_bad_setting(db: str, option: str, value: str, says: str) -> None:
    refused(cli("serve", "--db", db, option, value), 2, f"'{option}'", says)


def test_a_bad_setting_from_the_environment_is_refused_by_name(db: str) -> None:
    result = cli("cycle", "run", "--db", db, "--once", env={"FOURMICA_X402_FINALITY": "soon"})
    refused(result, 2, "'--finality'", "FOURMICA_X402_FINALITY", "from the environment")
    result = cli(
        "withdraw", "--db", db, ADDRESS, "$1", env={"FOURMICA_X402_WITHDRAWAL_GRACE": "-5"}
    )
    refused(result, 2, "FOURMICA_X402_WITHDRAWAL_GRACE")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _serving(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[str, Path]]:
    """``fourmica-x402 serve ARGS`` on a free port until it answers /health: its base URL and
    log file; stopped on the way out."""
    port = _free_port()
    log_path = tmp_path / f"serve-{port}.log"
    environ = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV} | env
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fourmica_x402", "serve", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_serve_says_when_it_made_a_new_database(tmp_path: Path) -> None:
    """Every other command refuses a --db file that is not there; serve makes one (it is the
    Core). A mistyped path gave a service on an empty Core without a word: it says so."""
    db = f"sqlite:///{tmp_path / 'core.db'}"
    with _serving(tmp_path, "--db", db, "--sandbox") as (_, log):
        assert f"no database at {tmp_path / 'core.db'}: a new, empty Core" in log.read_text()
    with _serving(tmp_path, "--db", db, "--sandbox") as (_, log):  # the same file again
        assert "new, empty Core" not in log.read_text()


def test_serve_applies_its_settings(tmp_path: Path) -> None:
    args = ["--db", f"sqlite:///{tmp_path / 'core.db'}", "--sandbox", "--withdrawal-grace", "2s"]
    args += ["--cycle-window", "90s", "--resolution-delay", "1m", "--finality", "5"]
    env = {"FOURMICA_X402_TAB_TTL": "10m", "FOURMICA_X402_PAYMENT_WINDOW": "0"}
    with _serving(tmp_path, *args, **env) as (base, log):
        tab = httpx.post(
            f"{base}/tabs", json={"userAddress": ADDRESS, "recipientAddress": "0x" + "22" * 20}
        )
        assert tab.status_code == 200 and tab.json()["ttlSeconds"] == 600, tab.text
        httpx.post(
            f"{base}/sandbox/deposit", json={"address": ADDRESS, "amount": "$5"}
        ).raise_for_status()
        asked = httpx.post(f"{base}/sandbox/withdraw", json={"address": ADDRESS, "amount": "$1"})
        withdrawal = asked.json()
        assert asked.status_code == 200, asked.text
        assert withdrawal["available_at"] - withdrawal["requested_at"] == 2
        answer = httpx.post(f"{base}/sandbox/cycles/close", json={})
        closed = answer.json()
        assert answer.status_code == 200, answer.text
        assert closed["closes_at"] - closed["opened_at"] == 90
        assert closed["resolve_at"] - closed["closed_at"] == 60
        assert closed["pay_by"] == closed["resolve_at"]  # FOURMICA_X402_PAYMENT_WINDOW=0
        assert closed["final_at"] - closed["pay_by"] == 5
    assert "Traceback" not in log.read_text()


def _serve_output(tmp_path: Path, *extra: str) -> str:
    """What ``serve`` says before it serves (it is stopped once it answers /health)."""
    with _serving(tmp_path, "--db", f"sqlite:///{tmp_path}/s.db", *extra) as (_, log):
        pass
    return log.read_text()


def test_serve_warns_when_sellers_cannot_refund(tmp_path: Path) -> None:
    """Outside the sandbox and without keys the service refuses every void and score: the
    sellers' refunds fail and their delivery scores never land. It said nothing."""
    warning = "no --api-key and no --seller-key"
    assert warning in _serve_output(tmp_path)
    assert warning not in _serve_output(tmp_path, "--seller-key", f"tok={ADDRESS}")
    assert warning not in _serve_output(tmp_path, "--seller-key", f"b64tok=={ADDRESS}")  # '=' in it
    assert warning not in _serve_output(tmp_path, "--sandbox")


def test_serve_warns_that_a_sandbox_without_a_key_is_open_to_anyone(tmp_path: Path) -> None:
    warning = "--sandbox without --api-key: anyone who reaches"
    assert warning in _serve_output(tmp_path, "--sandbox")
    assert warning not in _serve_output(tmp_path, "--sandbox", "--api-key", "op-token")


def test_cycle_run_says_what_it_does(db: str) -> None:
    first = cli("cycle", "run", "--db", db, "--once")
    assert first.exit_code == 0, first.output
    start, idle = first.stdout.splitlines()
    assert ISO_UTC.match(start) and f"cycle run: Core {db}, ticking once" in start
    assert "cycle window 1d, resolution delay 6h, payment window 2h, finality 2h" in start
    assert ISO_UTC.match(idle) and "idle: nothing due; no cycle open yet" in idle
    timetable = ["--resolution-delay", "0", "--payment-window", "0", "--finality", "0"]
    assert cli("cycle", "close", "--db", db, *timetable).exit_code == 0
    second = cli("cycle", "run", "--db", db, "--once", "--cycle-window", "1m")
    assert second.exit_code == 0, second.output
    start, step = second.stdout.splitlines()
    assert "cycle window 1m" in start
    assert step.endswith(" resolved 1 cycle, finalized 1 cycle"), step
    third = cli("cycle", "run", "--db", db, "--once")
    (idle,) = third.stdout.splitlines()[1:]
    assert re.search(
        r"idle: nothing due; next: cycle 2 closes at \S+Z \(in (1d 0h|23h 59m)\)", idle
    ), idle


def test_cycle_run_says_it_is_idle_once_a_minute_not_every_tick(tmp_path: Path, db: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fourmica_x402", "cycle", "run", "--db", db, "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # the start and first idle line
        time.sleep(1.5)  # some 30 ticks, nothing due
    finally:
        proc.terminate()
        rest, errors = proc.communicate(timeout=10)
    assert "cycle run:" in lines[0] and "every 0.05s" in lines[0], (lines, errors)
    assert "idle: nothing due" in lines[1], (lines, errors)
    assert rest == "", rest  # no further idle line within the minute


def test_factor_shows_and_sets_the_collateral_factor(db: str) -> None:
    assert cli("deposit", "--db", db, ADDRESS, "$10").exit_code == 0
    shown = json.loads(cli("factor", "--db", db).stdout)
    assert shown == {"network": NETWORK, "asset": USDC.address, "factor": "1", "as_decimal": 1.0}
    half = cli("factor", "--db", db, "1/2")
    assert half.exit_code == 0, half.output
    assert json.loads(half.stdout)["factor"] == "1/2"
    (row,) = json.loads(cli("positions", "--db", db, "--json").stdout)
    assert row["collateral"] == 10_000_000 and row["capacity"] == 5_000_000
    assert json.loads(cli("factor", "--db", db, "0.25").stdout)["as_decimal"] == 0.25
    assert json.loads(cli("factor", "--db", db).stdout)["factor"] == "1/4"  # kept in the database
    (row,) = json.loads(cli("positions", "--db", db, "--json").stdout)
    assert row["capacity"] == 2_500_000


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "above 0"),
        ("-1", "is not a factor"),
        ("abc", "is not a factor"),
        ("1e3", "is not a factor"),
        ("nan", "is not a factor"),
        ("1/0", "divides by zero"),
        ("101", "at most 100"),
    ],
)
def test_factor_refuses_a_bad_value(db: str, value: str, says: str) -> None:
    refused(cli("factor", "--db", db, "--", value), 2, "VALUE", says)


# -- the sweep: every subcommand, malformed arguments, no traceback ------------------------------

GARBAGE = ["not a url", "", " ", "-1", "nan", "1e999", "0x1234", "$1e30", ADDRESS]
#: Garbage that is a good value for that one option: any token address may hold collateral
#: (amounts in atomic units), so cycles of an unregistered token can be closed.
VALID_AS_IS = {"asset": ADDRESS}


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name)


COMMANDS = list(_leaves(main))


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def _valid(name: str, tmp_path: Path, url: str, port: int) -> str:
    """A value each argument or option is happy with, so one garbage value at a time is tested."""
    values = {
        "db": f"sqlite:///{tmp_path / 'sweep.db'}",
        "url": url,
        "key": KEY,
        "address": ADDRESS,
        "amount": "$1",
        "port": str(port),
        "guarantee_id": "0x" + "ab" * 32,  # evidence, dispute
        "note": "a note",
        "file": __file__,  # verify-evidence: a file that is not a bundle
    }
    assert name in values, f"the sweep needs a valid value for {name!r}: add it here"
    return values[name]


def _base(
    path: tuple[str, ...], tmp_path: Path, url: str, port: int
) -> tuple[list[str], list[str]]:
    """Options and arguments giving every required value (and --db, --port, --key — one of
    the buyer's three key options — and --once so a loop that accepted its arguments
    returns) a valid value."""
    options: list[str] = []
    arguments: list[str] = []
    for param in _command(path).params:
        if isinstance(param, click.Option) and param.name == "once":
            options.append("--once")
        elif isinstance(param, click.Option) and (
            param.required or param.name in ("db", "port", "key")
        ):
            options += [param.opts[0], _valid(str(param.name), tmp_path, url, port)]
        elif isinstance(param, click.Argument) and (param.required or path == ("withdraw",)):
            arguments.append(_valid(str(param.name), tmp_path, url, port))
    return options, arguments


def _variants(
    path: tuple[str, ...], options: list[str], arguments: list[str]
) -> Iterator[list[str]]:
    """The valid call with one value made garbage: each option (given or not), each argument;
    then an unknown option, then one argument too many."""
    command = _command(path)
    for option in command.params:
        if not isinstance(option, click.Option) or option.is_flag:
            continue
        flag = option.opts[0]
        others = list(options)
        if flag in others:
            i = others.index(flag)
            del others[i : i + 2]
        for junk in GARBAGE:
            if junk != VALID_AS_IS.get(str(option.name)):
                yield [*others, flag, junk, "--", *arguments]
    for i in range(len(arguments)):
        for junk in GARBAGE:
            if junk != arguments[i]:  # an address is garbage only where an address is not asked
                changed = list(arguments)
                changed[i] = junk
                yield [*options, "--", *changed]
    yield [*options, "--no-such-option", "--", *arguments]
    yield [*options, "--", *arguments, "an-extra-argument"]


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_sweep_malformed_arguments_never_give_a_traceback(
    path: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    closed_url: str,
    busy_port: int,
) -> None:
    monkeypatch.chdir(tmp_path)  # a garbage file name lands here, not in the repository
    options, arguments = _base(path, tmp_path, closed_url, busy_port)
    ran = 0
    for args in _variants(path, options, arguments):
        result = cli(*path, *args)
        everything = result.stdout + result.stderr
        where = f"{' '.join(path)} {args!r}"
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{where}: uncaught {result.exception!r}"
        )
        assert "Traceback" not in everything, f"{where}:\n{everything}"
        assert result.exit_code != 0, f"{where} was accepted:\n{everything}"
        last = [line for line in result.stderr.splitlines() if line.strip()][-1:]
        assert last and last[0].startswith("Error: "), f"{where}:\n{everything}"
        ran += 1
    assert ran >= 2


def test_the_sweep_covers_every_command() -> None:
    assert set(COMMANDS) >= {
        ("bench",),
        ("cycle", "close"),
        ("cycle", "run"),
        ("demo",),
        ("deposit",),
        ("factor",),
        ("pay",),
        ("positions",),
        ("serve",),
        ("withdraw",),
    }


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "main")
def test_help_works_everywhere(path: tuple[str, ...]) -> None:
    result = cli(*path, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


@pytest.mark.parametrize(
    ("key", "command"),
    [
        ("records_schema_version", ["evidence", "0x" + "05" * 32]),
        ("records_schema_version", ["dispute", "history", "0x" + "05" * 32]),
        ("webhooks_schema_version", ["serve", "--port", "1"]),
    ],
)
def test_a_database_a_newer_release_migrated_is_one_error_line(
    tmp_path: Path, key: str, command: list[str]
) -> None:
    """The records' or the webhooks' schema of a newer release: ``evidence``, ``dispute`` and
    ``serve`` printed a traceback where the Core's own schema gets one ``Error:`` line."""
    import sqlite3

    from fourmica_x402.records import Records
    from fourmica_x402.webhooks import Webhooks

    path = tmp_path / "core.db"
    core = Core(f"sqlite:///{path}")
    Records(core.store)
    Webhooks(core).close()
    core.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE fx_meta SET value = '99' WHERE key = ?", (key,))
    result = cli(*command, "--db", f"sqlite:///{path}")
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # click's own exit
    assert "Traceback" not in result.output and "99" in result.output.strip().splitlines()[-1]


@pytest.mark.postgres
def test_a_postgres_database_the_core_cannot_create_its_tables_in_is_one_line(
    postgres_url: str,
) -> None:
    """A search_path naming no schema (or a role without CREATE on it) failed the Core's first
    migration with the driver's traceback: the operator learnt nothing about what to fix."""
    url = postgres_url + "?options=-c%20search_path%3Dno_such_schema"
    line = refused(cli("positions", "--db", url), 1, "no schema has been selected")
    password = re.search(r"//[^:/@]+:([^@]+)@", postgres_url)
    assert password is None or password.group(1) not in line


def test_serve_refuses_a_public_url_it_would_hand_out_broken_or_with_a_secret(
    db: str, busy_port: int
) -> None:
    """The public URL is handed to every caller of /core/public-params: its credentials were
    published to anyone, and a query or fragment made the RPC URL ``…?x=1/rpc``."""
    for bad, says in (
        ("https://op:hunter2@core.example", "credentials"),
        ("https://TOKEN1234@core.example", "credentials"),
        ("https://core.example/base?x=1", "query"),
        ("https://core.example/#top", "fragment"),
    ):
        args = ("serve", "--db", db, "--port", str(busy_port), "--public-url", bad)
        line = refused(cli(*args), 2, "'--public-url'", says)
        assert "hunter2" not in line and "TOKEN1234" not in line, line
    # a path (a reverse proxy's prefix) is a public URL: the serve goes on to the busy port
    args = ("--public-url", "https://core.example/x402/")
    refused(cli("serve", "--db", db, "--port", str(busy_port), *args), 1, "cannot listen")


def test_serve_refuses_an_allowed_host_that_is_not_a_host_name(db: str, busy_port: int) -> None:
    """A name with a port or a URL never matches a browser's Host: refused, not ignored."""
    for bad in ("box.lan:8402", "https://box.lan"):
        args = ("serve", "--db", db, "--port", str(busy_port), "--allowed-host", bad)
        refused(cli(*args), 2, "'--allowed-host'", "host name")
    args = ("serve", "--db", db, "--port", str(busy_port), "--allowed-host", "box.lan")
    refused(cli(*args), 1, "cannot listen")  # a name: on to the (busy) port


def test_serve_refuses_one_seller_token_for_two_addresses(db: str, busy_port: int) -> None:
    """The last of two ``--seller-key`` with one token won: the first seller's key then voided
    and settled for the second seller's address, and no longer for its own."""
    other = "0x" + "22" * 20
    args = ("--seller-key", f"Sh4red={ADDRESS}", "--seller-key", f"Sh4red={other}")
    line = refused(cli("serve", "--db", db, "--port", str(busy_port), *args), 2, "'--seller-key'")
    assert "Sh4red" not in line and "two addresses" in line, line
    same = ("--seller-key", f"Sh4red={ADDRESS}", "--seller-key", f"Sh4red={ADDRESS}")
    refused(cli("serve", "--db", db, "--port", str(busy_port), *same), 1, "cannot listen")


@pytest.mark.parametrize(
    "args",
    [
        ("deposit", ADDRESS, "$5"),  # said it deposited: into a database gone at exit
        ("positions",),
        ("serve",),  # a database per thread: every request failed, with tracebacks
    ],
)
def test_an_in_memory_db_is_refused(args: tuple[str, ...], busy_port: int) -> None:
    port = ("--port", str(busy_port)) if args[0] == "serve" else ()
    line = cli(args[0], "--db", "sqlite:///:memory:", *args[1:], *port)
    refused(line, 2, "'--db'", "in-memory")


def test_masking_never_moves_a_urls_host() -> None:
    """An ``@`` in the query or fragment of an http(s) URL without a path is not userinfo:
    the receipt's (and the approval callback's) URL named another host (``b.example``) and
    lost the one paid. A password is still masked; libpq's userinfo still ends at ``/``."""
    from fourmica_x402.cli._args import safe_url

    for url, masked in (
        ("https://api.example?to=agent@b.example", "https://api.example?to=agent@b.example"),
        (
            "https://api.example?t=10:00&to=a@b.example",
            "https://api.example?t=10:00&to=a@b.example",
        ),
        ("http://testserver#me@b.example", "http://testserver#me@b.example"),
        ("https://u:s3cret@[::1]:8443?q=a@b.example", "https://u:***@[::1]:8443?q=a@b.example"),
        ("https://u:s3cret@hé.example:8/p?q=a@b#f", "https://u:***@hé.example:8/p?q=a@b#f"),
        ("https://T0KEN@hooks.example?x=y@z", "https://***@hooks.example?x=y@z"),
        ("postgresql://app:s3?cret@db/core", "postgresql://app:***@db/core"),
        ("https://app:s3#cret@hooks.example/x", "https://app:***@hooks.example/x"),
        ("https://app:s3?cret@hooks.example", "https://app:***@hooks.example"),
        # an API's credential in the query; names that only begin like one stay
        (
            "https://api.example/v1?q=x&api_key=s3cret#top",
            "https://api.example/v1?q=x&api_key=***#top",
        ),
        (
            "https://api.example?ACCESS_TOKEN=s3;sig=ab&keyword=k",
            "https://api.example?ACCESS_TOKEN=***;sig=***&keyword=k",
        ),
        (
            "https://api.example/?tokens=2&monkey=1&key=",
            "https://api.example/?tokens=2&monkey=1&key=***",
        ),
        # a presigned URL's signature and credential, a private token
        (
            "https://b.s3.example/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=ab12&private_token=t",
            "https://b.s3.example/o?X-Amz-Credential=***&X-Amz-Signature=***&private_token=***",
        ),
    ):
        assert safe_url(url) == masked, url
