"""Networks, assets and exact price parsing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fourmica_x402.errors import ConfigurationError
from fourmica_x402.networks import (
    TokenAmount,
    default_asset,
    find_asset,
    get_network,
    networks,
    parse_amount,
    register_asset,
    register_network,
    resolve_price,
    to_atomic,
)

USDC = default_asset("eip155:84532")


def test_builtin_networks() -> None:
    assert get_network("eip155:11155111").chain_id == 11155111
    assert default_asset("eip155:11155111").address == "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238"
    assert default_asset("eip155:84532").address == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    assert default_asset("eip155:8453").address == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert all(
        default_asset(n).decimals == 6 for n in ("eip155:11155111", "eip155:84532", "eip155:8453")
    )


@pytest.mark.parametrize(
    ("price", "atomic"),
    [
        ("$0.10", 100_000),
        ("0.10", 100_000),
        ("$2.01", 2_010_000),
        (" $ 1 ", 1_000_000),
        (Decimal("0.000001"), 1),
        (3, 3_000_000),
        ("$1_000", 1_000_000_000),
        ("1e-6", 1),
    ],
)
def test_prices_parse_exactly(price: object, atomic: int) -> None:
    assert to_atomic(price, USDC) == atomic  # type: ignore[arg-type]


def test_prices_scale_the_same_whatever_the_callers_decimal_context() -> None:
    """The exact scaling used a copy of the caller's context: one trapping Rounded refused
    a valid price written with 300 trailing zeros; one of 4 digits would round it."""
    import decimal

    with decimal.localcontext(decimal.Context(prec=4, traps=[decimal.Rounded])):
        assert to_atomic("$12345.678901", USDC) == 12_345_678_901
        assert to_atomic("$1." + "0" * 300, USDC) == 1_000_000


@pytest.mark.parametrize(
    "price",
    [
        *("$0.0000001", "0.1234567", 0.1, True, "", "$", "abc", "-1", "0", "NaN", "Infinity"),
        *(None, [1]),
        # more digits than Decimal's default 28: it rounded them into a whole number of units
        "0.99999999999999999999999999999",
        Decimal("0.1000000000000000000000000000001"),
        "$1E+1000000",  # decimal.Overflow, not a configuration error, before
        "\u0661",  # Arabic-Indic 1: Decimal reads it as 1
        "$\uff11.5",  # a full-width 1
    ],
)
def test_bad_prices_fail_at_configuration_time(price: object) -> None:
    with pytest.raises(ConfigurationError):
        to_atomic(price, USDC)  # type: ignore[arg-type]


def test_explicit_amounts_pass_through() -> None:
    explicit = {"amount": "12345", "asset": USDC.address.lower()}
    assert resolve_price(explicit, "eip155:84532") == TokenAmount(12345, USDC.address)
    assert resolve_price("$0.01", "eip155:84532") == TokenAmount(10_000, USDC.address)
    with pytest.raises(ConfigurationError):
        resolve_price({"amount": "1"}, "eip155:84532")
    with pytest.raises(ConfigurationError):
        resolve_price("$1", "eip155:84532", asset="0x" + "12" * 20)


@pytest.mark.parametrize(
    "price",
    [
        {"amount": "0", "asset": USDC.address},
        {"amount": "0x0", "asset": USDC.address},
        TokenAmount(0, USDC.address),
        TokenAmount(-5, USDC.address),
        TokenAmount("10", USDC.address),  # type: ignore[arg-type]
        TokenAmount(True, USDC.address),
        TokenAmount(10, "notanaddress"),
        TokenAmount(10, None),  # type: ignore[arg-type]
    ],
)
def test_an_explicit_price_is_checked_like_a_written_one(price: Any) -> None:
    """An explicit amount of 0 made a priced route free (a 402 asking for 0, a guarantee for
    nothing accepted); a bad TokenAmount failed every request instead of the start-up."""
    with pytest.raises(ConfigurationError):
        resolve_price(price, "eip155:84532")


def test_a_token_amount_comes_back_checksummed() -> None:
    lower = TokenAmount(7, USDC.address.lower())
    assert resolve_price(lower, "eip155:84532") == TokenAmount(7, USDC.address)


@pytest.mark.parametrize(
    "price",
    ["$9223372036854.775808", 2**63, {"amount": str(2**63), "asset": "0x" + "12" * 20}],
)
def test_a_price_no_core_can_keep_is_refused(price: Any) -> None:
    """Amounts are at most 2**63 - 1 atomic units: a dearer price could never be paid."""
    with pytest.raises(ConfigurationError, match="more than the most a Core keeps"):
        resolve_price(price, "eip155:84532")
    assert resolve_price("$9223372036854.775807", "eip155:84532").amount == 2**63 - 1


def test_registry_adds_networks_and_assets() -> None:
    register_network("eip155:31337", "Local")
    token = register_asset("eip155:31337", "0x" + "ab" * 20, symbol="TOK", decimals=18)
    assert default_asset("eip155:31337") == token
    assert find_asset("eip155:31337", token.address.lower()) == token
    assert to_atomic("$0.5", token) == 5 * 10**17
    for bad in ("solana:mainnet", "eip155:\u00b2", "eip155:0"):  # '²' is no chain id
        with pytest.raises(ConfigurationError):
            register_network(bad, "nope")


@pytest.mark.parametrize("decimals", [True, 6.0, "6", -1, 37])
def test_an_assets_decimals_are_a_whole_number_or_it_is_not_registered(
    decimals: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``decimals=True`` registered a token of 1 decimal (``"$0.5"`` was 5 units), ``6.0`` (a
    JSON or YAML config's number) registered and then raised ``TypeError`` pricing every
    request of a route priced per request, and ``"6"`` raised ``TypeError``: each is a
    ConfigurationError when registered now, and nothing is registered."""
    from fourmica_x402 import networks as registry

    monkeypatch.setattr(registry, "_assets", {k: dict(v) for k, v in registry._assets.items()})
    address = "0x" + "cd" * 20
    with pytest.raises(ConfigurationError, match="decimals"):
        register_asset("eip155:84532", address, symbol="T", decimals=decimals)
    assert find_asset("eip155:84532", address) is None


@pytest.mark.parametrize("caip2", ["eip155:084532", "eip155:" + str(2**64), "eip155:" + "9" * 5000])
def test_a_network_no_guarantee_or_core_api_could_serve_is_refused(caip2: str) -> None:
    """``eip155:084532`` was a network of its own with Base Sepolia's chain id: the Core API
    its offers name (``/chains/84532``) answered for ``eip155:84532``, another network's
    collateral and tabs. A chain id past 2**64 - 1 (a certificate's ``uint64``; past 2**256
    no buyer could even sign) started, and every payment then failed; 5000 digits raised
    Python's ValueError. Each is a ConfigurationError now."""
    with pytest.raises(ConfigurationError, match="CAIP-2"):
        register_network(caip2, "nope")
    assert all(n.caip2 != caip2 for n in networks())
    with pytest.raises(ConfigurationError):
        register_asset("eip155:999999", "0x" + "ab" * 20, symbol="X", decimals=6)
    with pytest.raises(ConfigurationError):
        get_network("eip155:999999")


@pytest.mark.parametrize(("raw", "value"), [("10", 10), ("0x0a", 10), ("0X0A", 10), (7, 7)])
def test_wire_amounts(raw: object, value: int) -> None:
    assert parse_amount(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "0x",
        "-1",
        "1.0",
        "1e3",
        "١٢",
        " ",
        True,
        1.0,
        None,
        -1,
        "0x" + "f" * 65,
        "9" * 100,
        "0x١٠",  # other digits than ASCII after 0x: int(..., 16) read them (16)
        "0x\uff11",
    ],
)
def test_bad_wire_amounts(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_amount(raw)


@pytest.mark.parametrize(
    ("raw", "why"),
    [("9" * 5000, "too long"), ("0x" + "f" * 100, "too long"), ("", "empty"), (1.5, "got float")],
)
def test_a_bad_amount_says_why(raw: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_amount(raw)
