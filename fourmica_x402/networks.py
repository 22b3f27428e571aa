"""Networks (CAIP-2 ``eip155:<chainId>``), their assets, and exact price parsing.

Three networks with USDC are known out of the box; :func:`register_network`
and :func:`register_asset` add more. Prices are parsed with ``Decimal`` into
integers of atomic units, and a price finer than the asset can express is a
configuration error rather than a silent truncation::

    >>> to_atomic("$2.01", default_asset("eip155:84532"))
    2010000
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from typing import Any

from ._eth import parse_address
from .errors import ConfigurationError

__all__ = [
    "Asset",
    "Network",
    "Price",
    "TokenAmount",
    "default_asset",
    "dollar_assets",
    "find_asset",
    "format_amount",
    "get_network",
    "networks",
    "parse_amount",
    "parse_money",
    "register_asset",
    "register_network",
    "resolve_price",
    "to_atomic",
]


@dataclass(frozen=True, slots=True)
class Network:
    """A chain, named by its CAIP-2 id."""

    caip2: str
    chain_id: int
    name: str


@dataclass(frozen=True, slots=True)
class Asset:
    """A token on one network. ``address`` is EIP-55 checksummed."""

    network: str
    address: str
    symbol: str
    decimals: int
    #: The token's own EIP-712 domain name and version, when known: challenges name them in
    #: ``extra`` (``name``, ``version``), as the official seller does for its default tokens.
    eip712: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TokenAmount:
    """An explicit price in atomic units of a given asset (bypasses ``$`` parsing)."""

    amount: int
    asset: str


Price = str | int | Decimal | TokenAmount | Mapping[str, Any]

_lock = threading.Lock()
_networks: dict[str, Network] = {}
_assets: dict[str, dict[str, Asset]] = {}  # caip2 -> checksummed address -> Asset
_default_assets: dict[str, str] = {}  # caip2 -> checksummed address


def register_network(caip2: str, name: str) -> Network:
    """Add (or return) a network. ``caip2`` must look like ``eip155:<chainId>``: the chain id
    written without leading zeros (``eip155:084532`` would be a second network of chain 84532),
    at most 2**64 - 1 (a guarantee's certificate carries it as a uint64)."""
    namespace, _, reference = caip2.partition(":")
    digits = reference.isascii() and reference.isdigit() and len(reference) <= 20
    if namespace != "eip155" or not digits or reference.startswith("0") or int(reference) >= 2**64:
        raise ConfigurationError(
            f"network must be a CAIP-2 id like 'eip155:8453', got {caip2!r:.80}"
        )
    network = Network(caip2=caip2, chain_id=int(reference), name=name)
    with _lock:
        existing = _networks.setdefault(caip2, network)
    return existing


def register_asset(
    network: str,
    address: str,
    *,
    symbol: str,
    decimals: int,
    default: bool = False,
    eip712: tuple[str, str] | None = None,
) -> Asset:
    """Add an asset to a registered network; ``default=True`` makes ``$`` prices use it.
    ``eip712``: the token's EIP-712 domain (name, version), if it has one."""
    if network not in _networks:
        raise ConfigurationError(f"unknown network {network!r}; call register_network first")
    try:
        checksummed = parse_address(address)
    except ValueError as exc:
        raise ConfigurationError(f"asset address: {exc}") from None
    if type(decimals) is not int or not 0 <= decimals <= 36:  # not True, 6.0 or "6"
        raise ConfigurationError(
            f"asset decimals must be a whole number 0..36, got {decimals!r:.20}"
        )
    asset = Asset(network, checksummed, symbol, decimals, eip712)
    with _lock:
        _assets.setdefault(network, {})[checksummed] = asset
        if default or network not in _default_assets:
            _default_assets[network] = checksummed
    return asset


def get_network(caip2: str) -> Network:
    """The registered network ``caip2``; unknown networks are a configuration error."""
    try:
        return _networks[caip2]
    except KeyError:
        known = ", ".join(sorted(_networks))
        raise ConfigurationError(f"unknown network {caip2!r} (known: {known})") from None


def networks() -> list[Network]:
    """All registered networks, in registration order."""
    return list(_networks.values())


def chain_named(text: str) -> int | None:
    """The chain id ``text`` (decimal digits, a path segment) names, when a registered network
    has it; else None."""
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    chain_id = int(text)
    return chain_id if any(n.chain_id == chain_id for n in networks()) else None


def default_asset(network: str) -> Asset:
    """The asset ``$`` prices are denominated in on ``network``."""
    get_network(network)
    try:
        return _assets[network][_default_assets[network]]
    except KeyError:
        raise ConfigurationError(f"network {network!r} has no asset registered") from None


def dollar_assets() -> list[Asset]:
    """The registered tokens pegged to the US dollar, on every network."""
    with _lock:
        return [
            asset
            for by_address in _assets.values()
            for asset in by_address.values()
            if asset.symbol.upper() in _DOLLAR_SYMBOLS
        ]


def find_asset(network: str, address: str) -> Asset | None:
    """The registered asset at ``address`` on ``network``, or None."""
    try:
        key = parse_address(address)
    except ValueError:
        return None
    return _assets.get(network, {}).get(key)


def parse_amount(value: object) -> int:
    """An atomic amount from the wire: decimal string, ``0x`` hex string, or int.

    Raises ``ValueError`` for anything else (negative, float, junk, > 2**256-1).
    """
    if isinstance(value, bool):
        raise ValueError("amount must be an integer")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and 0 < len(value) <= 80:
        text = value.strip()
        try:
            if text[:2] in ("0x", "0X"):  # ASCII: int() reads other scripts' digits too
                result = int(text[2:], 16) if text[2:].isascii() and text[2:].isalnum() else -1
            elif text.isdigit() and text.isascii():
                result = int(text)
            else:
                result = -1
        except ValueError:
            result = -1
    elif isinstance(value, str):  # empty, or longer than any 256-bit amount is written
        long = f"amount is too long ({len(value)} characters): at most 2**256 - 1"
        raise ValueError(long if value else "amount is empty")
    else:
        raise ValueError(f"amount must be a decimal or 0x-hex string, got {type(value).__name__}")
    if result < 0 or result >= 1 << 256:
        raise ValueError(f"invalid amount {value!r:.40}")
    return result


#: Significant digits a price is scaled with: enough for any uint256 amount, exactly.
_EXACT_DIGITS = 200


def to_atomic(price: Price, asset: Asset) -> int:
    """Convert a human price into atomic units of ``asset`` exactly.

    Accepts ``"$0.10"``, ``"0.10"``, ``Decimal("0.10")`` and ``int`` (whole
    units). Floats are refused: they cannot hold most decimal prices exactly.
    """
    if isinstance(price, bool | float):
        why = "floats are inexact" if isinstance(price, float) else "a boolean is no amount"
        raise ConfigurationError(
            f"price {price!r}: pass a string such as '$0.10' or a Decimal; {why}"
        )
    if isinstance(price, int):
        value = Decimal(price)
    elif isinstance(price, Decimal):
        value = price
    elif isinstance(price, str):
        text = price.strip().replace("_", "")
        if text.startswith("$"):
            text = text[1:].strip()
        if not text.isascii():  # Decimal reads other scripts' digits: a typo, never a price
            raise ConfigurationError(f"price {price!r:.40} is not a number like '$0.10'")
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise ConfigurationError(f"price {price!r} is not a number like '$0.10'") from None
    else:
        raise ConfigurationError(
            f"price must be a string, int or Decimal, got {type(price).__name__}"
        )
    if not value.is_finite() or value <= 0:
        raise ConfigurationError(f"price {price!r} must be a positive amount")
    try:  # exactly: the default context's 28 digits would round "0.999…9" (29 nines) up
        with localcontext(Context(prec=_EXACT_DIGITS, traps=[Inexact, Overflow])):
            scaled = value.scaleb(asset.decimals)
    except ArithmeticError:
        raise ConfigurationError(f"price {price!r:.40} is too large or too fine") from None
    if scaled != scaled.to_integral_value():
        raise ConfigurationError(
            f"price {price!r} has more decimals than {asset.symbol} supports ({asset.decimals})"
        )
    return int(scaled)


#: Symbols of tokens pegged to the US dollar: their amounts are shown as ``$1.50``.
_DOLLAR_SYMBOLS = frozenset({"USDC", "USDT", "USDBC", "DAI", "PYUSD", "USDS", "USDE"})
_EXPONENT = re.compile(r"[+-]?(?=[0-9.,]*[0-9])[0-9.,]+[eE][+-]?[0-9]+\Z")


def format_amount(amount: int, asset: Asset | None, *, units: bool = False) -> str:
    """An amount of atomic units as people read it: ``$5.00`` for a dollar token,
    ``0.5 WETH`` for another registered token, ``1234 atomic units`` for an unknown one.

    At least two decimals for dollars, more only when the amount has them (``$0.000001``),
    never rounded. ``units=True`` appends the atomic amount: ``$0.01 (10000 units)``.

        >>> format_amount(5_000_000, default_asset("eip155:84532"))
        '$5.00'
    """
    if asset is None:
        return f"{amount} atomic unit{'' if amount in (1, -1) else 's'}"
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**asset.decimals)
    digits = str(frac).rjust(asset.decimals, "0").rstrip("0") if asset.decimals else ""
    dollars = asset.symbol.upper() in _DOLLAR_SYMBOLS
    if dollars:
        digits = digits.ljust(min(2, asset.decimals), "0")
    number = f"{whole:,}" + (f".{digits}" if digits else "")
    text = f"{sign}${number}" if dollars else f"{sign}{number} {asset.symbol}"
    return f"{text} ({amount} unit{'' if amount in (1, -1) else 's'})" if units else text


def parse_money(
    text: str, asset: Asset, *, what: str = "amount", maximum: int | None = None
) -> int:
    """Atomic units from an amount a person typed (``"$5"``, ``"0.25"``, ``"1,000"``).

    Stricter than :func:`to_atomic`, and its messages name ``what`` (an amount, a cap…):
    exponents (``1e30``), signs, NaN and infinity are refused, as is anything finer than
    the asset's decimals or (when given) above ``maximum`` atomic units.
    """
    raw = text
    text = text.strip().replace("_", "")
    if text.startswith("$"):
        text = text[1:].strip()
    example = "'$5' or '$0.25'"
    if not text:
        raise ConfigurationError(f"{what} is empty: give a number such as {example}")
    if _EXPONENT.match(text):
        raise ConfigurationError(
            f"{what} {raw!r} uses exponent notation: write it out, such as {example}"
        )
    if text.startswith("-") and text[1:].strip():
        raise ConfigurationError(f"{what} {raw!r} must be more than zero")
    if "," in text:  # thousands separators: "1,000.50"; anything else is refused below
        head, _, tail = text.partition(".")
        groups = head.split(",")
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
            raise ConfigurationError(f"{what} {raw!r} is not a number such as {example}")
        text = "".join(groups) + (f".{tail}" if "." in text else "")
    whole, _, frac = text.partition(".")
    if not (whole or frac) or not (whole + frac).isdigit() or not (whole + frac).isascii():
        raise ConfigurationError(f"{what} {raw!r} is not a number such as {example}")
    value = Decimal(text)
    if value <= 0:
        raise ConfigurationError(f"{what} {raw!r} must be more than zero")
    scaled = value.scaleb(asset.decimals)
    if scaled != scaled.to_integral_value():
        raise ConfigurationError(
            f"{what} {raw!r} has more decimals than {asset.symbol} supports ({asset.decimals})"
        )
    atomic = int(scaled)
    if maximum is not None and atomic > maximum:
        raise ConfigurationError(
            f"{what} {raw!r} is too large: at most {format_amount(maximum, asset)}"
        )
    return atomic


def resolve_price(price: Price, network: str, asset: str | None = None) -> TokenAmount:
    """A route's price as ``TokenAmount`` on ``network`` (explicit amounts pass through)."""
    found = _resolve_price(price, network, asset)
    if found.amount <= 0:  # a payment of nothing would run the route for free
        raise ConfigurationError(
            f"price {price!r:.80} is {found.amount} atomic units: a price is at least 1"
        )
    if found.amount > MAX_AMOUNT:  # no buyer could pay it: the Core keeps 64-bit amounts
        raise ConfigurationError(
            f"price {price!r} is {found.amount} atomic units, more than the most a Core keeps "
            f"({MAX_AMOUNT})"
        )
    return found


#: The largest amount the Core keeps (signed 64-bit columns), in atomic units.
MAX_AMOUNT = 2**63 - 1


def _resolve_price(price: Price, network: str, asset: str | None) -> TokenAmount:
    if isinstance(price, TokenAmount):
        if isinstance(price.amount, bool) or not isinstance(price.amount, int):
            raise ConfigurationError(
                f"TokenAmount's amount is a whole number of atomic units, not {price.amount!r:.40}"
            )
        try:
            return TokenAmount(price.amount, parse_address(price.asset))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"TokenAmount's asset: {exc}") from None
    if isinstance(price, Mapping):
        if (
            set(price) - {"amount", "asset", "extra"}
            or "amount" not in price
            or "asset" not in price
        ):
            raise ConfigurationError("an explicit price is {'amount': '<atomic>', 'asset': '0x…'}")
        try:
            return TokenAmount(parse_amount(price["amount"]), parse_address(price["asset"]))
        except ValueError as exc:
            raise ConfigurationError(f"explicit price: {exc}") from None
    chosen = default_asset(network) if asset is None else find_asset(network, asset)
    if chosen is None:
        raise ConfigurationError(f"asset {asset} is not registered on {network}")
    return TokenAmount(to_atomic(price, chosen), chosen.address)


def _install_defaults() -> None:
    for caip2, name, usdc in (
        ("eip155:11155111", "Ethereum Sepolia", "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238"),
        ("eip155:84532", "Base Sepolia", "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
        ("eip155:8453", "Base", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    ):
        register_network(caip2, name)
        register_asset(caip2, usdc, symbol="USDC", decimals=6, default=True, eip712=("USDC", "2"))


_install_defaults()
