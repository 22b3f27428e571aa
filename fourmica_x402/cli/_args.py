"""What every command shares: input checks, option decorators, the Core's settings and
opening the Core. Durations, amounts and times as people write and read them live in
:mod:`._format` (importable from here too)."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import click

from .._eth import parse_address
from .._urls import PASSWORD_PARAM
from .._urls import safe_url as safe_url
from ..config import DEFAULT_DB
from ..core.config import CoreConfig
from ..errors import FourmicaError
from ._format import INT64_MAX as INT64_MAX
from ._format import MAX_DURATION as MAX_DURATION
from ._format import Duration, span
from ._format import Seconds as Seconds
from ._format import atomic_amount as atomic_amount
from ._format import duration as duration
from ._format import parse_duration as parse_duration
from ._format import utc as utc
from ._format import with_times as with_times

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
TOKEN = re.compile(r"[!-~]+\Z")  # a bearer token: printable ASCII, no spaces
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP method is an RFC 9110 token


# -- input checks ------------------------------------------------------------------------------


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
        shown = f"{value[:6]!r}…" if len(value) > 12 else repr(value)
        raise click.BadParameter(f"{shown} is not a token address (0x and 40 hex digits)") from None


def check_address(value: str, name: str = "ADDRESS") -> str:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def check_key(key: str, param_hint: str = "'--key'", where: str = "") -> str:
    """A private key is 32 bytes: 64 hex digits, with or without 0x. Never echoes the key.

    ``where`` prefixes the message (e.g. the environment variable the key came from)."""
    body = key.strip()
    body = body[2:] if body[:2] in ("0x", "0X") else body
    if not re.fullmatch(r"[0-9a-fA-F]*", body):
        raise click.BadParameter(
            f"{where}not a hex private key (64 hex digits, optionally after 0x)",
            param_hint=param_hint,
        )
    if len(body) != 64:
        count, unit = (len(body) // 2, "byte") if len(body) % 2 == 0 else (len(body), "hex digit")
        size = f"{count} {unit}" + ("" if count == 1 else "s")
        hint = " (that is an address, not a private key)" if len(body) == 40 else ""
        raise click.BadParameter(
            f"{where}a private key is 32 bytes (64 hex digits); this one is {size}{hint}",
            param_hint=param_hint,
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


# -- the Core's settings (docs/operations.md, "Operator settings") -------------------------------


@dataclass(frozen=True)
class Setting:
    """A :class:`CoreConfig` duration as an option: ``--cycle-window``, ``FOURMICA_X402_CYCLE_WINDOW``."""

    field: str
    help: str
    zero: bool = False  # 0 is a meaningful value (no delay)
    whole: bool = False  # the Core keeps it in whole seconds

    @property
    def option(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def envvar(self) -> str:
        return "FOURMICA_X402_" + self.field.upper()

    @property
    def default(self) -> float:
        value: Any = next(f.default for f in fields(CoreConfig) if f.name == self.field)
        return float(value)


SETTINGS = {
    setting.field: setting
    for setting in (
        Setting(
            "tab_ttl",
            "How long a new tab lasts when the buyer names no TTL of its own (fixed when the "
            "tab opens).",
            whole=True,
        ),
        Setting(
            "validation_timeout",
            "How long a G-v2 guarantee waits for its validation score, then is cancelled and "
            "its lock released (fixed when the guarantee is accepted).",
        ),
        Setting(
            "cycle_window",
            "How long a clearing cycle stays open (fixed when the cycle opens).",
        ),
        Setting(
            "resolution_delay",
            "From a cycle's close to its resolution, when only net debits stay locked (fixed "
            "when the cycle closes).",
            zero=True,
        ),
        Setting(
            "payment_window",
            "From a cycle's resolution to the deadline for paying net debits (fixed when the "
            "cycle closes).",
            zero=True,
        ),
        Setting(
            "finality",
            "From the payment deadline to finalization, when unpaid debits are covered from "
            "collateral (fixed when the cycle closes).",
            zero=True,
        ),
        Setting(
            "withdrawal_grace",
            "How long a requested withdrawal waits before it can be finalized (fixed when it "
            "is requested).",
            zero=True,
        ),
    )
}
#: The settings that make a cycle's timetable: its length (fixed when it opens), the rest
#: (fixed when it closes).
CYCLE_SETTINGS = ("cycle_window", "resolution_delay", "payment_window", "finality")


def core_settings(*names: str, note: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options (and environment variables) for these :class:`CoreConfig` fields; the command
    gets them as one ``config`` argument. ``note`` says, in each option's help, what in this
    command the setting applies to. Settings are per process, never stored in the database."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def with_config(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in names}
            return command(config=core_config(given), **kwargs)

        for name in reversed(names):
            setting = SETTINGS[name]
            with_config = click.option(
                setting.option,
                setting.field,
                envvar=setting.envvar,
                show_envvar=True,
                default=span(setting.default),
                show_default=True,
                type=Duration(zero=setting.zero, whole=setting.whole),
                help=f"{setting.help} {note}",
            )(with_config)
        return with_config

    return decorate


def core_config(given: dict[str, float | None]) -> CoreConfig:
    """A :class:`CoreConfig` of the settings given (the others keep their defaults)."""
    values: dict[str, Any] = {
        name: int(value) if SETTINGS[name].whole else value
        for name, value in given.items()
        if value is not None
    }
    return CoreConfig(**values)


def describe(config: CoreConfig, names: tuple[str, ...]) -> str:
    """``cycle window 1d, resolution delay 6h``: settings as the start line of a process says them."""
    return ", ".join(f"{name.replace('_', ' ')} {span(getattr(config, name))}" for name in names)


# -- the database ------------------------------------------------------------------------------


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def check_db(db: str) -> str:
    """Refuse anything but ``sqlite:///path`` and ``postgresql://…`` (docs/operations.md)."""
    if is_postgres(db):
        return db
    hint = "give sqlite:///path/to/core.db or postgresql://user@host/dbname"
    if db.startswith("sqlite:///") and "?" in db:  # it would be part of the file's name
        raise click.BadParameter(f"{db!r:.80} has a '?…' query: {hint}", param_hint="'--db'")
    if db.startswith("sqlite:///") and db[len("sqlite:///") :].strip() == ":memory:":
        # One per connection, gone at exit: a deposit into it reaches no seller, a service on
        # it has another, empty one on each thread.
        raise click.BadParameter(
            f"an in-memory database lasts only as long as this command: {hint}", param_hint="'--db'"
        )
    if db.startswith("sqlite:///") and db[len("sqlite:///") :].strip():
        return db
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


def mask_password(text: str, url: str) -> str:
    """Hide ``url``'s password in ``text``: in the URL's userinfo, and where it stands alone
    as a word; never inside other words (a password ``p`` leaves "port" alone)."""
    from urllib.parse import quote, unquote, urlsplit

    try:
        passwords = [urlsplit(url).password or ""]
    except ValueError:
        passwords = []
    passwords += [m.group(2).strip("'") for m in PASSWORD_PARAM.finditer(url)]
    text = text.replace(url, safe_url(url))
    for password in filter(None, passwords):
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


def open_core(
    db: str, *, create: bool = False, can_create: bool = False, config: CoreConfig | None = None
) -> Any:
    """The Core in ``db`` with ``config``; a SQLite file that does not exist is made only when
    ``create`` (``serve``, ``deposit --create``), else refused (``can_create``: say --create
    would do)."""
    check_db(db)
    if not create:
        require_existing(db, can_create=can_create)
    from ..core import Core

    try:
        return Core(db, config=config)
    except FourmicaError as exc:
        raise db_error(exc, db) from None
    except ImportError as exc:  # PostgreSQL without its driver: the message says what to install
        lines = str(exc).strip().splitlines()
        raise (
            missing_extra(exc) or click.ClickException(lines[0] if lines else repr(exc))
        ) from None
