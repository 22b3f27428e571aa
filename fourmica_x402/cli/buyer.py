"""The buyer's commands: ``offers`` (a seller's paid routes and prices, before paying), ``pay``
(one paid request, like curl) and ``key`` (a throwaway test key, or the address of yours). A key
is never printed back, except by ``key new``, which made it.

Both take the key one of three ways (docs/buyer.md, "Keys"): ``--key HEX`` (or
``FOURMICA_X402_KEY``), ``--key-env NAME`` (the variable holding it), or ``--key-file PATH``
(an encrypted keystore; its password from ``--password-env NAME`` or typed at a prompt).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from .._json import loads, loads_checked
from ..config import DEFAULT_DB
from ..errors import FourmicaError
from ._args import METHOD, check_key, safe_url
from ._format import Seconds

if TYPE_CHECKING:
    from ..client import BuyerKey

_KEY_HELP = "Buyer private key (hex); or set FOURMICA_X402_KEY."
#: How ``key new`` labels what it made (docs/operations.md, "Keys": test keys are labelled).
_TEST_KEY_NOTE = "a throwaway TEST key for sandbox use: never send real funds to its address"


def _max_price(value: str) -> str | int:
    """``'$0.05'`` (dollars of the asset offered) or ``'50000u'`` (atomic units)."""
    from decimal import Decimal

    from ..networks import Asset, parse_money

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


def _key_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The three ways to give the buyer's key (one of them), added to ``command``."""

    @click.option("--key", envvar="FOURMICA_X402_KEY", default=None, help=_KEY_HELP)
    @click.option(
        "--key-env",
        default=None,
        metavar="NAME",
        help="Read the hex key from environment variable NAME (keeps it out of the command).",
    )
    @click.option(
        "--key-file",
        default=None,
        metavar="PATH",
        help="An encrypted keystore file (Web3 Secret Storage JSON; needs eth-account).",
    )
    @click.option(
        "--password-env",
        default=None,
        metavar="NAME",
        help="The keystore's password is in environment variable NAME (else it is asked for).",
    )
    @functools.wraps(command)
    def wrapped(
        *args: Any,
        key: str | None,
        key_env: str | None,
        key_file: str | None,
        password_env: str | None,
        **kwargs: Any,
    ) -> Any:
        buyer = _load_key(key, key_env, key_file, password_env)
        return command(*args, buyer=buyer, **kwargs)

    return wrapped


def _load_key(
    key: str | None, key_env: str | None, key_file: str | None, password_env: str | None
) -> BuyerKey:
    """The buyer's key from exactly one source; every refusal names the option, never the key."""
    from ..client import BuyerKey

    from_env = click.get_current_context().get_parameter_source("key")
    if from_env == ParameterSource.ENVIRONMENT and (key_env is not None or key_file is not None):
        key = None  # an explicit --key-env/--key-file wins over FOURMICA_X402_KEY
    # A bad key from the environment names the variable: there was no --key to look at.
    key_hint = (
        "environment variable FOURMICA_X402_KEY"
        if from_env == ParameterSource.ENVIRONMENT
        else "'--key'"
    )
    sources = (("--key", key), ("--key-env", key_env), ("--key-file", key_file))
    given = [name for name, value in sources if value is not None]
    if not given:
        raise click.UsageError(
            "Missing option '--key': give the buyer's key as --key HEX, --key-env NAME or "
            "--key-file PATH (or set FOURMICA_X402_KEY)"
        )
    if len(given) > 1:
        raise click.UsageError(f"give one key, not {' and '.join(given)}")
    if password_env is not None and key_file is None:
        raise click.BadParameter("goes with --key-file", param_hint="'--password-env'")
    try:
        if key is not None:
            return BuyerKey(check_key(key, key_hint))
        if key_env is not None:
            if not key_env or key_env.strip() != key_env or "=" in key_env:
                raise click.BadParameter(
                    "not an environment variable name", param_hint="'--key-env'"
                )
            value = os.environ.get(key_env)
            if value is None or not value.strip():
                raise click.BadParameter(
                    f"environment variable {key_env} holds no key", param_hint="'--key-env'"
                )
            return BuyerKey(check_key(value, "'--key-env'", f"{key_env}: "))
        assert key_file is not None
        if password_env is not None:
            password = os.environ.get(password_env)
            if password is None:
                raise click.BadParameter(
                    f"environment variable {password_env} is not set",
                    param_hint="'--password-env'",
                )
        else:
            if not os.path.exists(key_file):  # before asking for a password (a pipe is fine)
                raise click.BadParameter(
                    f"no keystore file at {key_file!r}", param_hint="'--key-file'"
                )
            try:
                password = click.prompt(
                    f"Password for {key_file}", hide_input=True, err=True, default=None
                )
            except click.Abort:
                raise click.BadParameter(
                    "no password given (use --password-env NAME, or type it at the prompt)",
                    param_hint="'--key-file'",
                ) from None
        return BuyerKey.from_keystore(key_file, password or "")
    except FourmicaError as exc:  # ConfigurationError: says what, never the key or password
        option = given[0]
        where = f"{key_env}: " if option == "--key-env" else ""
        hint = key_hint if option == "--key" else f"'{option}'"
        raise click.BadParameter(where + exc.message, param_hint=hint) from None


def _receipt(receipt: Any, payer: str) -> dict[str, Any] | None:
    """A receipt as JSON, naming the payer (the address the key signs for) after the seller."""
    if receipt is None:
        return None
    shown: dict[str, Any] = {}
    for name, value in receipt.to_dict().items():
        # the URL as typed: its password or token is never printed (docs/operations.md)
        shown[name] = safe_url(value) if name == "url" and isinstance(value, str) else value
        if name == "seller":
            shown["payer"] = payer
    return shown


def _failed_after_paying(receipt: Any, payer: str, error: Exception | str) -> None:
    """When the call failed after its payment left (its answer unreadable, none within the
    timeout, or Ctrl-C), say so with the receipt, and exit 1: a script that retries pays again."""
    if receipt is None or receipt.outcome not in ("paid", "unanswered"):
        return
    message = f"request failed after its payment was made (a retry pays again): {error}"
    shown = {"paid": True, "error": "request_failed", "message": message, "payer": payer}
    click.echo(json.dumps({**shown, "receipt": _receipt(receipt, payer)}, indent=2))
    sys.exit(1)


def _collateral_hint(receipt: Any, payer: str) -> str:
    """What to do when the seller's Core has too little collateral for ``payer``: deposit
    into the database that Core uses (docs/operations.md, "The embedded Core")."""
    from ..networks import find_asset, format_amount

    price = "'$1'"
    if receipt is not None and receipt.amount is not None and receipt.network:
        token = find_asset(receipt.network, receipt.asset) if receipt.asset else None
        price = f"'{format_amount(receipt.amount, token)}'" if token else f"{receipt.amount}u"
    return (
        f"{payer} has too little free collateral on the seller's Core. Deposit at least the "
        f"price into the database that seller uses (its FOURMICA_X402_DB; the examples use "
        f"{DEFAULT_DB} in the seller's working directory): fourmica-x402 deposit "
        f"--db <the seller's database URL> {payer} {price}"
    )


@click.command()
@click.argument("url")
@_key_options
@click.option(
    "--max-price",
    default=None,
    help="Refuse to pay more than this per request, e.g. '$0.05' (dollar tokens only; '50000u': "
    "atomic units of whichever token is asked). Without it, any price the collateral covers.",
)
@click.option(
    "--method", default=None, help="HTTP method (default: GET, or POST with --data, as curl)."
)
@click.option("--data", default=None, help="JSON request body (sent with POST by default).")
@click.option("--receipts", default=None, help="Append the receipt to this SQLite ledger file.")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=Seconds(),
    help="Seconds per HTTP read; a 402 or tab answer must arrive whole within it too.",
)
def pay(
    url: str,
    buyer: BuyerKey,
    max_price: str | None,
    method: str | None,
    data: str | None,
    receipts: str | None,
    timeout: float,
) -> None:
    """Make one paid request, like curl; print the body and the receipt as JSON."""
    import sqlite3

    from .._urls import check_http_url

    try:
        check_http_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    cap = None if max_price is None else _max_price(max_price)
    if method is None:  # curl's rule: a body goes with POST unless a method is named
        method = "GET" if data is None else "POST"
    if not METHOD.match(method):
        raise click.BadParameter(f"{method!r:.40} is not an HTTP method", param_hint="'--method'")
    try:
        body = (
            loads_checked(data, parse_float=_finite_float, parse_constant=_reject_constant)
            if data is not None
            else None
        )
    except (ValueError, RecursionError) as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="'--data'") from None
    if receipts is not None and not receipts.strip():
        raise click.BadParameter("give a file path for the ledger", param_hint="'--receipts'")

    import httpx

    from ..client import RECEIPT_KEY, PaymentTransport, ReceiptLedger, SpendingPolicy
    from ..client.transport import EnvironmentTransport
    from ..errors import PaymentRefused

    try:  # an in-memory one without --receipts: what the payment did, if the call then fails
        ledger = ReceiptLedger(receipts or ":memory:")
    except (sqlite3.Error, OSError) as exc:
        raise click.BadParameter(
            f"cannot open the SQLite ledger {receipts!r}: {exc}", param_hint="'--receipts'"
        ) from None
    payer = buyer.address
    # The environment's proxies, as offers (a plain httpx client) honours them: every call
    # of the payment goes through them (docs/buyer.md, "Where the buyer connects").
    try:
        proxied = EnvironmentTransport()
    except (ImportError, ValueError, httpx.InvalidURL) as exc:  # e.g. SOCKS without the extra
        raise click.ClickException(
            f"the proxy the environment names cannot be used: {exc}"
        ) from None
    transport = PaymentTransport(
        buyer, policy=SpendingPolicy(max_per_request=cap), ledger=ledger, transport=proxied
    )
    # A redirect is followed, as a buyer's agent would: one call still pays once (a 402 after
    # a paid answer's redirect is refused, docs/buyer.md "Redirects").
    with httpx.Client(transport=transport, timeout=timeout, follow_redirects=True) as client:
        try:
            response = client.request(method.upper(), url, json=body)
        except PaymentRefused as exc:
            refusal: dict[str, Any] = {
                "paid": ledger.paid,  # this call's receipts, not other runs' (--receipts)
                "error": exc.reason,
                "message": exc.message,
                "payer": payer,
            }
            if exc.reason == "insufficient_collateral":
                refusal["hint"] = _collateral_hint(exc.receipt, payer)
            refusal["receipt"] = _receipt(exc.receipt, payer)
            click.echo(json.dumps(refusal, indent=2))
            sys.exit(1)
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # last two: a bad redirect
            _failed_after_paying(ledger.last, payer, exc)
            raise click.ClickException(f"request failed: {exc}") from None
        except KeyboardInterrupt:  # Ctrl-C: a payment that left is said (a rerun pays again)
            _failed_after_paying(ledger.last, payer, "interrupted")
            raise
        except FourmicaError as exc:  # e.g. a --max-price finer than the offered token
            raise click.ClickException(exc.message) from None
        except sqlite3.Error as exc:
            raise click.ClickException(f"cannot write the receipt to {receipts!r}: {exc}") from None
        try:
            shown: object = loads(response.content)
        except ValueError:
            shown = response.text
        click.echo(
            json.dumps(
                {
                    "status": response.status_code,
                    "body": shown,
                    "receipt": _receipt(response.extensions.get(RECEIPT_KEY), payer),
                },
                indent=2,
            )
        )
        if response.status_code >= 400:
            sys.exit(1)


@click.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print the offers as JSON.")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=Seconds(),
    help="Seconds per HTTP read; the listing must arrive whole within it too.",
)
def offers(url: str, as_json: bool, timeout: float) -> None:
    """List a seller's paid routes and their prices (its /.well-known/x402); pays nothing.

    URL is any URL of the seller. A price set per request shows as such: the route's 402
    says how much.
    """
    from ..client.discovery import discover, listing_url
    from ..errors import DiscoveryFailed

    try:
        listing_url(url)
    except DiscoveryFailed as exc:
        raise click.BadParameter(exc.message, param_hint="URL") from None
    try:
        found = discover(url, timeout=timeout)
    except DiscoveryFailed as exc:
        raise click.ClickException(exc.message) from None
    if not found and not as_json:
        click.echo("no paid routes listed")
        return
    if as_json:
        import dataclasses

        shown = []
        for resource in found:
            listed = dataclasses.asdict(resource)
            listed["accepts"] = [
                {"price": o.price, **dataclasses.asdict(o)} for o in resource.accepts
            ]
            shown.append(listed)
        click.echo(json.dumps(shown, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"offers ({escape(safe_url(url))})")
    for column in ("method", "resource", "price", "network", "pay to", "description"):
        table.add_column(column, overflow="fold")  # a narrow terminal: never cut an address
    for resource in found:
        for offer in resource.accepts:
            cells = (resource.method, resource.url, offer.price, offer.network)
            pay_to = offer.pay_to or "set per request"
            table.add_row(*(escape(_printable(c)) for c in (*cells, pay_to, resource.description)))
    Console().print(table)


def _printable(text: str) -> str:
    """A seller's text as a terminal may show it: control characters (escape sequences that
    could rewrite what is shown, or the window title) become U+FFFD."""
    return "".join("\ufffd" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


@click.group()
def key() -> None:
    """Buyer keys: make a throwaway test key, or show the address of yours."""


@key.command("new")
@click.option(
    "--json", "as_json", is_flag=True, help="Print private_key, address and note as JSON."
)
def key_new(as_json: bool) -> None:
    """Make a fresh TEST key for the sandbox and print it with its address.

    The key goes to standard output as an export line, so that
    eval "$(fourmica-x402 key new)" puts it in FOURMICA_X402_KEY for `pay` and
    `key address`; the note and the address go to standard error, for you to read.
    Nothing stores the key.
    """
    import secrets

    import coincurve

    from ..guarantee import address_of

    while True:
        raw = secrets.token_bytes(32)
        try:  # all but about 2**-128 of 32-byte strings are valid secp256k1 keys
            private = coincurve.PrivateKey(raw)
        except ValueError:
            continue
        break
    secret, address = "0x" + raw.hex(), address_of(private)
    if as_json:
        click.echo(
            json.dumps(
                {"private_key": secret, "address": address, "note": _TEST_KEY_NOTE}, indent=2
            )
        )
        return
    click.echo(f"# {_TEST_KEY_NOTE}", err=True)
    click.echo(f"# address: {address}", err=True)
    click.echo(f"export FOURMICA_X402_KEY={secret}  # TEST key, sandbox only")


@key.command("address")
@_key_options
def key_address(buyer: BuyerKey) -> None:
    """Print the address of the key (--key, FOURMICA_X402_KEY, --key-env or --key-file); the
    key itself is never printed."""
    click.echo(buyer.address)
