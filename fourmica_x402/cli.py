"""The ``fourmica-x402`` command line.

Every refused input ends in one ``Error: …`` line and a non-zero exit (2 for a bad
argument), never a traceback; amounts are shown to people in dollars and times in UTC.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, datetime
from typing import Any

import click

from ._eth import parse_address
from .config import DEFAULT_DB
from .errors import FourmicaError

__all__ = ["main"]

#: Optional packages and the extra that installs each (pyproject.toml, [project.optional-dependencies]).
_EXTRAS = {
    "starlette": "server",
    "uvicorn": "server",
    "gunicorn": "server",
    "prometheus_client": "server",
    "fastapi": "fastapi",
    "flask": "flask",
    "werkzeug": "flask",
    "django": "django",
    "asgiref": "django",
    "psycopg": "postgres",
    "eth_account": "bench",
}
#: What the demo's sellers and servers import (a Starlette, a Flask and a Django seller).
_DEMO_NEEDS = ("starlette", "flask", "werkzeug", "django", "uvicorn")
_INT64_MAX = 2**63 - 1  # the Core keeps amounts in signed 64-bit columns
_TOKEN = re.compile(r"[!-~]+\Z")  # a bearer token: printable ASCII, no spaces
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP method is an RFC 9110 token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fourmica-x402")
def main() -> None:
    """Sell an API per request with the 4Mica credit flow on top of x402."""


# -- input checks ------------------------------------------------------------------------------


class _Seconds(click.ParamType):
    """A duration: a finite number of seconds above zero."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float) and math.isfinite(value) and value > 0:
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} must be a number of seconds above zero", param, ctx)
        return seconds


def _check_network(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .networks import get_network

    try:
        get_network(value)
    except FourmicaError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def _check_asset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r:.60} is not a token address (0x and 40 hex digits)"
        ) from None


def _check_address(value: str, name: str = "ADDRESS") -> str:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _missing_extra(exc: ImportError) -> click.ClickException | None:
    """The message for an optional framework that is not installed (None: another failure)."""
    root = (exc.name or "").split(".")[0]
    if root not in _EXTRAS:
        return None
    return click.ClickException(
        f'{root} is not installed: pip install "fourmica-x402[{_EXTRAS[root]}]" '
        f'(or "fourmica-x402[all]")'
    )


def _is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def _check_db(db: str) -> str:
    """Refuse anything but ``sqlite:///path`` and ``postgresql://…`` (docs/operations.md)."""
    if _is_postgres(db):
        return db
    if db.startswith("sqlite:///") and db[len("sqlite:///") :].strip():
        return db
    hint = "give sqlite:///path/to/core.db or postgresql://user@host/dbname"
    if not db.strip():
        raise click.BadParameter(f"the database URL is empty: {hint}", param_hint="'--db'")
    if "://" not in db and not db.startswith("sqlite:"):
        raise click.BadParameter(
            f"{db!r:.80} is not a database URL: {hint} (a file: sqlite:///{db})",
            param_hint="'--db'",
        )
    raise click.BadParameter(
        f"{_safe_url(db)!r:.80} is not a database URL: {hint}", param_hint="'--db'"
    )


def _safe_url(url: str) -> str:
    """``url`` with the password of its userinfo (``user:secret@``) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def _mask_password(text: str, url: str) -> str:
    """Hide ``url``'s password in ``text``: in the URL's userinfo, and where it stands alone
    as a word; never inside other words (a password ``p`` leaves "port" alone)."""
    from urllib.parse import quote, unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    text = text.replace(url, _safe_url(url))
    if not password:
        return text
    for form in {password, unquote(password), quote(password, safe="")}:
        if form:
            text = re.sub(rf"(?<![\w%]){re.escape(form)}(?![\w%])", "***", text)
    return text


def _db_error(exc: FourmicaError, db: str) -> click.ClickException:
    """A database failure as one line, with the password masked only where it appears."""
    from .core import StoreUnavailable

    message = exc.message
    cause = exc.__context__
    if _is_postgres(db) and isinstance(exc, StoreUnavailable) and cause is not None:
        # The store hid every occurrence of the password's characters; say it again from
        # the driver's own message, masking the password only where it is written out.
        prefix, sep, _ = message.partition(": ")
        lines = str(cause).strip().splitlines()
        detail = lines[0] if lines else type(cause).__name__
        message = f"{prefix}{sep or ': '}{_mask_password(detail, db)}"
    return click.ClickException(message.replace("\n", " "))


def _core(db: str) -> Any:
    _check_db(db)
    from .core import Core

    try:
        return Core(db)
    except FourmicaError as exc:
        raise _db_error(exc, db) from None
    except ImportError as exc:  # PostgreSQL without its driver: the message says what to install
        lines = str(exc).strip().splitlines()
        raise (
            _missing_extra(exc) or click.ClickException(lines[0] if lines else repr(exc))
        ) from None


def _amount(value: str, network: str, asset: str | None) -> int:
    """'$5' or '5.00' → dollars of the asset; '5000000u' → atomic units."""
    from .networks import default_asset, find_asset, format_amount, parse_money

    text = value.strip().replace("_", "")
    if text.endswith("u") and text[:-1].isdigit() and text[:-1].isascii():
        atomic = int(text[:-1])
        if not 0 < atomic <= _INT64_MAX:
            limit = format_amount(_INT64_MAX, None)
            raise click.BadParameter(f"amount {value!r} must be 1 to {limit}", param_hint="AMOUNT")
        return atomic
    token = find_asset(network, asset) if asset else default_asset(network)
    if token is None:
        raise click.BadParameter(
            "unknown asset: give the amount in atomic units, e.g. 5000000u", param_hint="AMOUNT"
        )
    try:
        return parse_money(value, token, what="amount", maximum=_INT64_MAX)
    except FourmicaError as exc:
        raise click.BadParameter(exc.message, param_hint="AMOUNT") from None


def _utc(at: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the second: ``2025-06-01T12:00:00Z``."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _with_times(record: dict[str, Any]) -> dict[str, Any]:
    """A record's epoch times (``*_at``, ``pay_by``) as UTC ISO strings."""
    return {
        key: _utc(value)
        if (key.endswith("_at") or key == "pay_by") and isinstance(value, int | float)
        else value
        for key, value in record.items()
    }


@main.command()
@click.option("--quick", is_flag=True, help="A short run (≤ 30 s).")
@click.option(
    "--serve", is_flag=True, help="Keep the sellers and the dashboard running afterwards."
)
def demo(quick: bool, serve: bool) -> None:
    """Run the end-to-end demo on the embedded Core (exit 0 only if every invariant held)."""
    import importlib.util

    missing = [name for name in _DEMO_NEEDS if importlib.util.find_spec(name) is None]
    try:
        if missing:
            raise ModuleNotFoundError(name=missing[0])
        from .adapters.demo import run_demo

        code = run_demo(quick=quick, serve=serve)
    except ImportError as exc:
        if _missing_extra(exc) is None:
            raise
        raise click.ClickException(
            f"the demo needs every framework ({(exc.name or '').split('.')[0]} is not "
            'installed): pip install "fourmica-x402[all]"'
        ) from None
    sys.exit(code)


_db = click.option(
    "--db",
    envvar="FOURMICA_X402_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Core database URL (or set FOURMICA_X402_DB).",
)
_network = click.option(
    "--network",
    default="eip155:84532",
    show_default=True,
    callback=_check_network,
    help="CAIP-2 network.",
)
_asset = click.option(
    "--asset",
    default=None,
    callback=_check_asset,
    help="Token address (default: the network's USDC).",
)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4021, show_default=True, type=click.IntRange(1, 65535))
@_db
@click.option(
    "--sandbox", is_flag=True, help="Enable the sandbox API (deposits, cycles, debit payments)."
)
@click.option(
    "--api-key",
    envvar="FOURMICA_X402_API_KEY",
    default=None,
    help="Require this bearer token on seller and sandbox calls (the operator's key).",
)
@click.option(
    "--seller-key",
    "seller_keys",
    multiple=True,
    envvar="FOURMICA_X402_SELLER_KEYS",
    metavar="TOKEN=0xADDRESS",
    help="A bearer token that may void, score and settle for that seller address only "
    "(repeatable; the environment variable takes them space-separated).",
)
@_network
def serve(
    host: str,
    port: int,
    db: str,
    sandbox: bool,
    api_key: str | None,
    seller_keys: tuple[str, ...],
    network: str,
) -> None:
    """Run the Core as an HTTP service (facilitator API, Core API, dashboard, metrics)."""
    import socket

    keys: dict[str, str] = {}
    for item in seller_keys:
        token, sep, address = item.partition("=")
        try:
            if not sep or not token:
                raise ValueError("expected TOKEN=0xADDRESS")
            if not _TOKEN.match(token):
                raise ValueError("the token must be printable ASCII without spaces")
            keys[token] = parse_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--seller-key'") from None
    if api_key is not None and not _TOKEN.match(api_key):
        # An empty key would let every request through as the operator.
        raise click.BadParameter(
            "give a token of printable ASCII without spaces (or leave the option out)",
            param_hint="'--api-key'",
        )
    try:
        family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise click.BadParameter(
            f"cannot resolve {host!r:.80}: {exc}", param_hint="'--host'"
        ) from None
    try:  # say so now, rather than after the Core is open and the server half started
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    _check_db(db)
    try:
        import uvicorn

        from .adapters.service import create_app
    except ImportError as exc:
        if _missing_extra(exc) is None:
            raise
        raise click.ClickException(
            'serve needs the server extra: pip install "fourmica-x402[server]"'
        ) from None
    app = create_app(_core(db), sandbox=sandbox, api_key=api_key, seller_keys=keys, network=network)
    click.echo(
        f"fourmica-x402 Core on http://{host}:{port}  (dashboard: /, metrics: /metrics, sandbox: {sandbox})"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command()
@_db
@_network
@_asset
@click.argument("address")
@click.argument("amount")
def deposit(db: str, network: str, asset: str | None, address: str, amount: str) -> None:
    """Add sandbox collateral: AMOUNT like '$5' (or '5000000u' for atomic units)."""
    address = _check_address(address)
    atomic = _amount(amount, network, asset)
    core = _core(db)
    try:
        position = core.deposit(address, atomic, network=network, asset=asset)
    except FourmicaError as exc:
        raise _db_error(exc, db) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(position.to_dict(), indent=2))


@main.command()
@_db
@_network
@_asset
@click.option(
    "--finalize",
    "finalize_id",
    type=click.IntRange(min=1),
    default=None,
    help="Finalize this pending withdrawal.",
)
@click.option(
    "--cancel",
    "cancel_id",
    type=click.IntRange(min=1),
    default=None,
    help="Cancel this pending withdrawal.",
)
@click.argument("address", required=False)
@click.argument("amount", required=False)
def withdraw(
    db: str,
    network: str,
    asset: str | None,
    finalize_id: int | None,
    cancel_id: int | None,
    address: str | None,
    amount: str | None,
) -> None:
    """Request a withdrawal (ADDRESS AMOUNT), or --finalize/--cancel a pending one.

    Times are printed in UTC (ISO 8601), amounts in atomic units.
    """
    from .errors import CoreError

    if finalize_id is not None and cancel_id is not None:
        raise click.UsageError("give --finalize ID or --cancel ID, not both")
    if finalize_id is None and cancel_id is None:
        if not (address and amount):
            raise click.UsageError("give ADDRESS AMOUNT, --finalize ID or --cancel ID")
        address = _check_address(address)
        atomic = _amount(amount, network, asset)
    elif address or amount:
        raise click.UsageError("--finalize and --cancel take no ADDRESS or AMOUNT")
    core = _core(db)
    try:
        if finalize_id is not None:
            try:
                result = core.finalize_withdrawal(finalize_id)
            except CoreError as exc:
                if exc.reason != "withdrawal_not_ready":
                    raise
                ready = core.withdrawal(finalize_id).available_at
                raise click.ClickException(
                    f"the grace period of withdrawal {finalize_id} has not passed: it runs until "
                    f"{_utc(ready)} (UTC, {_duration(ready - core.clock())} from now)"
                ) from None
        elif cancel_id is not None:
            result = core.cancel_withdrawal(cancel_id)
        else:
            assert address is not None
            result = core.request_withdrawal(address, atomic, network=network, asset=asset)
    except FourmicaError as exc:
        raise _db_error(exc, db) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(_with_times(result.to_dict()), indent=2))


def _duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: how long until something, to the unit people care about."""
    left = max(0, math.ceil(seconds))
    days, rest = divmod(left, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


@main.group()
def cycle() -> None:
    """Clearing cycles: close one now, or keep them running."""


@cycle.command("close")
@_db
@_network
@_asset
def cycle_close(db: str, network: str, asset: str | None) -> None:
    """Close the open cycle now and net its guarantees (times in UTC, amounts atomic)."""
    core = _core(db)
    try:
        closed = core.close_cycle(network=network, asset=asset)
        rows = core.cycle_positions(closed.cycle_id)
    except FourmicaError as exc:
        raise _db_error(exc, db) from None
    click.echo(
        json.dumps(
            {"cycle": _with_times(closed.to_dict()), "positions": [p.to_dict() for p in rows]},
            indent=2,
        )
    )


@cycle.command("run")
@_db
@click.option(
    "--interval", default=5.0, show_default=True, type=_Seconds(), help="Seconds between ticks."
)
@click.option("--once", is_flag=True, help="Advance what is due once and exit.")
def cycle_run(db: str, interval: float, once: bool) -> None:
    """Advance cycles (close, resolve, finalize with default coverage) as they fall due."""
    import time

    core = _core(db)
    while True:
        try:
            done = core.tick()
        except FourmicaError as exc:
            raise _db_error(exc, db) from None
        if any(done.values()):
            click.echo(json.dumps(done))
        if once:
            return
        time.sleep(interval)


@main.command()
@_db
@click.option("--json", "as_json", is_flag=True, help="Print JSON (amounts in atomic units).")
def positions(db: str, as_json: bool) -> None:
    """Collateral, locks and capacity of every participant (in dollars; --json: atomic)."""
    from .networks import find_asset, format_amount

    core = _core(db)
    try:
        rows = core.positions()
    except FourmicaError as exc:
        raise _db_error(exc, db) from None
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    columns = ("collateral", "locked", "pending", "capacity")
    shown = []
    for p in rows:
        token = find_asset(p.network, p.asset)
        amounts = (p.collateral, p.locked, p.pending_withdrawal, p.capacity)
        shown.append((p.address, p.network, *(format_amount(a, token) for a in amounts)))
    title = f"positions ({_safe_url(db)})"
    table = Table(title=title)
    table.add_column("address", no_wrap=True)
    table.add_column("network", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in shown:
        table.add_row(*row)
    console = Console()
    headers = ("address", "network", *columns)
    widths = [max(len(text) for text in column) for column in zip(headers, *shown, strict=True)]
    if 1 + sum(width + 3 for width in widths) <= console.width:  # "│ cell " per column, "│"
        console.print(table)
        return
    # Too narrow for the table: one block per position, addresses always written out in full.
    click.echo(title)
    if not shown:
        click.echo("(none)")
    for row in shown:
        click.echo(f"\n{row[0]}\n  network     {row[1]}")
        for column, text in zip(columns, row[2:], strict=True):
            click.echo(f"  {column:<11} {text}")


def _check_key(key: str) -> str:
    """A private key is 32 bytes: 64 hex digits, with or without 0x. Never echoes the key."""
    body = key.strip()
    body = body[2:] if body[:2] in ("0x", "0X") else body
    if not re.fullmatch(r"[0-9a-fA-F]*", body):
        raise click.BadParameter(
            "not a hex private key (64 hex digits, optionally after 0x)", param_hint="'--key'"
        )
    if len(body) != 64:
        size = f"{len(body) // 2} bytes" if len(body) % 2 == 0 else f"{len(body)} hex digits"
        hint = " (that is an address, not a private key)" if len(body) == 40 else ""
        raise click.BadParameter(
            f"a private key is 32 bytes (64 hex digits); this one is {size}{hint}",
            param_hint="'--key'",
        )
    return "0x" + body


def _max_price(value: str) -> str | int:
    """``'$0.05'`` (dollars of the asset offered) or ``'50000u'`` (atomic units)."""
    from decimal import Decimal

    from .networks import Asset, parse_money

    text = value.strip().replace("_", "")
    if text.endswith("u") and text[:-1].isdigit() and text[:-1].isascii() and int(text[:-1]) > 0:
        return int(text[:-1])
    # Checked here; converted with the offered asset's decimals when a payment is considered.
    probe = Asset(network="", address="", symbol="", decimals=36)
    try:
        exact = parse_money(value, probe, what="price")
    except FourmicaError as exc:
        raise click.BadParameter(exc.message, param_hint="'--max-price'") from None
    return format(Decimal(exact).scaleb(-probe.decimals).normalize(), "f")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@main.command()
@click.argument("url")
@click.option(
    "--key",
    envvar="FOURMICA_X402_KEY",
    required=True,
    help="Buyer private key (hex); or set FOURMICA_X402_KEY.",
)
@click.option(
    "--max-price",
    default=None,
    help="Refuse to pay more than this per request, e.g. '$0.05' (or '50000u': atomic units).",
)
@click.option("--method", default="GET", show_default=True, help="HTTP method.")
@click.option("--data", default=None, help="JSON request body.")
@click.option("--receipts", default=None, help="Append the receipt to this SQLite ledger file.")
@click.option(
    "--timeout", default=30.0, show_default=True, type=_Seconds(), help="Seconds per HTTP call."
)
def pay(
    url: str,
    key: str,
    max_price: str | None,
    method: str,
    data: str | None,
    receipts: str | None,
    timeout: float,
) -> None:
    """Make one paid request, like curl; print the body and the receipt as JSON."""
    import sqlite3
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok_url = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok_url = False
    if not ok_url:
        raise click.BadParameter(f"{url!r:.80} is not an http(s):// URL", param_hint="URL")
    key = _check_key(key)
    cap = None if max_price is None else _max_price(max_price)
    if not _METHOD.match(method):
        raise click.BadParameter(f"{method!r:.40} is not an HTTP method", param_hint="'--method'")
    try:
        body = (
            json.loads(data, parse_float=_finite_float, parse_constant=_reject_constant)
            if data is not None
            else None
        )
    except (ValueError, RecursionError) as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="'--data'") from None
    if receipts is not None and not receipts.strip():
        raise click.BadParameter("give a file path for the ledger", param_hint="'--receipts'")

    import httpx

    from .client import RECEIPT_KEY, PaymentTransport, ReceiptLedger, SpendingPolicy
    from .errors import PaymentRefused

    try:
        ledger = ReceiptLedger(receipts) if receipts else None
    except (sqlite3.Error, OSError) as exc:
        raise click.BadParameter(
            f"cannot open the SQLite ledger {receipts!r}: {exc}", param_hint="'--receipts'"
        ) from None
    try:
        transport = PaymentTransport(key, policy=SpendingPolicy(max_per_request=cap), ledger=ledger)
    except ValueError:
        raise click.BadParameter(
            "not a valid secp256k1 private key", param_hint="'--key'"
        ) from None
    with httpx.Client(transport=transport, timeout=timeout) as client:
        try:
            response = client.request(method.upper(), url, json=body)
        except PaymentRefused as exc:
            receipt = exc.receipt.to_dict() if exc.receipt is not None else None  # type: ignore[attr-defined]
            click.echo(
                json.dumps(
                    {
                        "paid": False,
                        "error": exc.reason,
                        "message": exc.message,
                        "receipt": receipt,
                    },
                    indent=2,
                )
            )
            sys.exit(1)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise click.ClickException(f"request failed: {exc}") from None
        except FourmicaError as exc:  # e.g. a --max-price finer than the offered token
            raise click.ClickException(exc.message) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"cannot write the receipt to {receipts!r}: {exc}") from None
        receipt = response.extensions.get(RECEIPT_KEY)
        try:
            shown: object = response.json()
        except ValueError:
            shown = response.text
        click.echo(
            json.dumps(
                {
                    "status": response.status_code,
                    "body": shown,
                    "receipt": receipt.to_dict() if receipt is not None else None,
                },
                indent=2,
            )
        )
        if response.status_code >= 400:
            sys.exit(1)


#: What each benchmark needs beyond the base install (the module, then its extra).
_BENCH_NEEDS = {"P4-asgi": ("uvicorn",), "P4-wsgi": ("gunicorn",)}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--quick", is_flag=True, help="Fewer iterations (noisier).")
@click.option("--only", multiple=True, help="Run only these benchmarks (repeatable).")
@click.option("--check", is_flag=True, help="Exit 1 when a target is missed.")
def bench(as_json: bool, quick: bool, only: tuple[str, ...], check: bool) -> None:
    """Measure the hot paths against baselines taken in the same run."""
    import importlib.util

    from . import bench as benchmarks

    unknown = [name for name in only if name not in benchmarks.BENCHMARKS]
    if unknown:
        raise click.UsageError(
            f"unknown benchmark(s): {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(benchmarks.BENCHMARKS)}"
        )
    chosen = list(only or benchmarks.BENCHMARKS)
    for name in list(chosen):
        missing = [m for m in _BENCH_NEEDS.get(name, ()) if importlib.util.find_spec(m) is None]
        if not missing:
            continue
        extra = _EXTRAS[missing[0]]
        why = f'needs {missing[0]}, which is not installed: pip install "fourmica-x402[{extra}]"'
        if only:  # asked for by name: say why it cannot run
            raise click.ClickException(f"benchmark {name} {why}")
        click.echo(f"bench: {name} skipped: {why}", err=True)
        chosen.remove(name)
    if not chosen:
        return
    try:
        results = benchmarks.run(chosen, quick=quick)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    except ImportError as exc:
        raise (_missing_extra(exc) or exc) from None
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        _print_table(results)
    if check and any(r.met is False for r in results):
        sys.exit(1)


def _print_table(results: list) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fourmica-x402 bench")
    for column in ("id", "what", "ours", "baseline", "ratio", "target", "met"):
        table.add_column(column)
    for r in results:
        base = "—" if r.baseline is None else f"{r.baseline:,.1f} {r.unit}"
        ratio = "—" if r.ratio is None else f"{r.ratio:.3f}"
        met = {True: "yes", False: "NO", None: "—"}[r.met]
        table.add_row(
            r.id,
            r.title,
            f"{r.ours:,.1f} {r.unit}",
            f"{base}\n({r.baseline_name})",
            ratio,
            r.target,
            met,
        )
    Console().print(table)
