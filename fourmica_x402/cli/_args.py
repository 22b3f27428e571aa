"""What every command shares: input checks, option decorators, opening the Core, and money
and times as people read them (dollars; UTC ISO 8601)."""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from typing import Any

import click

from .._eth import parse_address
from ..config import DEFAULT_DB
from ..errors import FourmicaError

#: Optional packages and the extra that installs each (pyproject.toml, [project.optional-dependencies]).
EXTRAS = {
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
INT64_MAX = 2**63 - 1  # the Core keeps amounts in signed 64-bit columns
TOKEN = re.compile(r"[!-~]+\Z")  # a bearer token: printable ASCII, no spaces
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP method is an RFC 9110 token


# -- input checks ------------------------------------------------------------------------------


class Seconds(click.ParamType):
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


def check_network(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..networks import get_network

    try:
        get_network(value)
    except FourmicaError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def check_asset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r:.60} is not a token address (0x and 40 hex digits)"
        ) from None


def check_address(value: str, name: str = "ADDRESS") -> str:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def check_key(key: str) -> str:
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


def missing_extra(exc: ImportError) -> click.ClickException | None:
    """The message for an optional framework that is not installed (None: another failure)."""
    root = (exc.name or "").split(".")[0]
    if root not in EXTRAS:
        return None
    return click.ClickException(
        f'{root} is not installed: pip install "fourmica-x402[{EXTRAS[root]}]" '
        f'(or "fourmica-x402[all]")'
    )


def atomic_amount(value: str, network: str, asset: str | None) -> int:
    """'$5' or '5.00' → dollars of the asset; '5000000u' → atomic units."""
    from ..networks import default_asset, find_asset, format_amount, parse_money

    text = value.strip().replace("_", "")
    if text.endswith("u") and text[:-1].isdigit() and text[:-1].isascii():
        atomic = int(text[:-1])
        if not 0 < atomic <= INT64_MAX:
            limit = format_amount(INT64_MAX, None)
            raise click.BadParameter(f"amount {value!r} must be 1 to {limit}", param_hint="AMOUNT")
        return atomic
    token = find_asset(network, asset) if asset else default_asset(network)
    if token is None:
        raise click.BadParameter(
            "unknown asset: give the amount in atomic units, e.g. 5000000u", param_hint="AMOUNT"
        )
    try:
        return parse_money(value, token, what="amount", maximum=INT64_MAX)
    except FourmicaError as exc:
        raise click.BadParameter(exc.message, param_hint="AMOUNT") from None


# -- options shared by the Core commands ---------------------------------------------------------

db_option = click.option(
    "--db",
    envvar="FOURMICA_X402_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Core database URL: the seller's (or set FOURMICA_X402_DB).",
)
network_option = click.option(
    "--network",
    default="eip155:84532",
    show_default=True,
    callback=check_network,
    help="CAIP-2 network.",
)
asset_option = click.option(
    "--asset",
    default=None,
    callback=check_asset,
    help="Token address (default: the network's USDC).",
)


# -- the database ------------------------------------------------------------------------------


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def check_db(db: str) -> str:
    """Refuse anything but ``sqlite:///path`` and ``postgresql://…`` (docs/operations.md)."""
    if is_postgres(db):
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
        f"{safe_url(db)!r:.80} is not a database URL: {hint}", param_hint="'--db'"
    )


def require_existing(db: str, *, can_create: bool = False) -> None:
    """Refuse a SQLite file that is not there yet. Opening it would make a second, empty Core:
    collateral deposited there is collateral the seller never sees (docs/operations.md, "The
    embedded Core": the seller's app makes its database, in its own working directory)."""
    if not db.startswith("sqlite:///"):
        return
    path = db[len("sqlite:///") :]
    if path == ":memory:" or os.path.exists(path):
        return
    where = os.path.abspath(path)
    given = f"--db {db}" if os.path.isabs(path) else f"--db {db}, relative to this directory"
    create = "; or --create to start a new, empty one" if can_create else ""
    raise click.ClickException(
        f"no Core database at {where} ({given}): point --db (or FOURMICA_X402_DB) at the "
        f"seller's database, e.g. --db sqlite:////home/you/shop/fourmica_x402.db for a seller "
        f"started in /home/you/shop (the examples use {DEFAULT_DB}, in the seller's working "
        f"directory){create}"
    )


def safe_url(url: str) -> str:
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


def mask_password(text: str, url: str) -> str:
    """Hide ``url``'s password in ``text``: in the URL's userinfo, and where it stands alone
    as a word; never inside other words (a password ``p`` leaves "port" alone)."""
    from urllib.parse import quote, unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    text = text.replace(url, safe_url(url))
    if not password:
        return text
    for form in {password, unquote(password), quote(password, safe="")}:
        if form:
            text = re.sub(rf"(?<![\w%]){re.escape(form)}(?![\w%])", "***", text)
    return text


def db_error(exc: FourmicaError, db: str) -> click.ClickException:
    """A database failure as one line, with the password masked only where it appears."""
    from ..core import StoreUnavailable

    message = exc.message
    cause = exc.__context__
    if is_postgres(db) and isinstance(exc, StoreUnavailable) and cause is not None:
        # The store hid every occurrence of the password's characters; say it again from
        # the driver's own message, masking the password only where it is written out.
        prefix, sep, _ = message.partition(": ")
        lines = str(cause).strip().splitlines()
        detail = lines[0] if lines else type(cause).__name__
        message = f"{prefix}{sep or ': '}{mask_password(detail, db)}"
    return click.ClickException(message.replace("\n", " "))


def open_core(db: str, *, create: bool = False, can_create: bool = False) -> Any:
    """The Core in ``db``; a SQLite file that does not exist is made only when ``create``
    (``serve``, ``deposit --create``), else refused (``can_create``: say --create would do)."""
    check_db(db)
    if not create:
        require_existing(db, can_create=can_create)
    from ..core import Core

    try:
        return Core(db)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    except ImportError as exc:  # PostgreSQL without its driver: the message says what to install
        lines = str(exc).strip().splitlines()
        raise (
            missing_extra(exc) or click.ClickException(lines[0] if lines else repr(exc))
        ) from None


# -- times --------------------------------------------------------------------------------------


def utc(at: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, to the second: ``2025-06-01T12:00:00Z``."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_times(record: dict[str, Any]) -> dict[str, Any]:
    """A record's epoch times (``*_at``, ``pay_by``) as UTC ISO strings."""
    return {
        key: utc(value)
        if (key.endswith("_at") or key == "pay_by") and isinstance(value, int | float)
        else value
        for key, value in record.items()
    }


def duration(seconds: float) -> str:
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
