"""The signature hot paths against eth-account: recovery (``recover``) and signing (P6)."""

from __future__ import annotations

from typing import Any

import coincurve

from ..guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    recover_signer,
    sign_claims,
    typed_data,
)
from .common import Result, compare, sizes

__all__ = ["bench_recover", "bench_sign"]

# Throwaway test key (well known, never funded). Benchmarks only.
_TEST_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
_KEY = coincurve.PrivateKey(bytes.fromhex(_TEST_KEY[2:]))


def _sample_claims() -> tuple[GuaranteeClaims, Eip712Domain, SignedGuarantee]:
    domain = Eip712Domain(chain_id=84532)
    claims = GuaranteeClaims.v1(
        user="0x2c7536E3605D9C16a7a3D7b1898e529396a65c23",
        recipient="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        tab_id=0x77C8B26F70D0550143DEACAA3EA82C387595B51A2088CBBECC495A3DC868249,
        req_id=7,
        amount=10_000,
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        timestamp=1_716_500_000,
    )
    return claims, domain, sign_claims(claims, _KEY, domain)


def _eth_account() -> Any:
    try:
        from eth_account import Account
        from eth_account.messages import encode_typed_data
    except ImportError:
        return None
    return Account, encode_typed_data


def bench_recover(quick: bool) -> Result:
    """Hash + recover one G-v1 guarantee, vs eth-account's encode_typed_data + recover_message."""
    claims, domain, signed = _sample_claims()
    expected = claims.user_address
    baseline = None
    eth = _eth_account()
    if eth is not None:
        account, encode = eth
        document = typed_data(claims, domain)
        signature = signed.signature

        def baseline() -> object:
            return account.recover_message(encode(full_message=document), signature=signature)

        assert baseline() == expected

    assert recover_signer(signed, domain) == expected
    ours, base = compare(lambda: recover_signer(signed, domain), baseline, *sizes(quick))
    return Result(
        id="recover",
        title="hash + recover one G-v1 guarantee",
        unit="µs",
        ours=ours,
        baseline=base,
        baseline_name="eth-account encode_typed_data + recover_message",
        target="≤ 120 µs",
        met=ours <= 120,
    )


def bench_sign(quick: bool) -> Result:
    """P6: buyer signing one G-v1 guarantee, vs eth-account's sign_typed_data."""
    claims, domain, signed = _sample_claims()
    baseline = None
    eth = _eth_account()
    if eth is not None:
        account, _ = eth
        document = typed_data(claims, domain)

        def baseline() -> object:
            return account.sign_typed_data(_TEST_KEY, full_message=document)

        assert bytes(baseline().signature) == signed.signature  # type: ignore[attr-defined]

    ours, base = compare(lambda: sign_claims(claims, _KEY, domain), baseline, *sizes(quick))
    return Result(
        id="P6",
        title="buyer signs one G-v1 guarantee",
        unit="µs",
        ours=ours,
        baseline=base,
        baseline_name="eth-account sign_typed_data",
        target="≤ 120 µs",
        met=ours <= 120,
    )
