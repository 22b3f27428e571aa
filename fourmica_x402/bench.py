"""Benchmarks behind ``fourmica-x402 bench``.

Every figure is reported beside a baseline measured in the same run, as a
ratio, so results compare across machines. Each benchmark returns a
:class:`Result`; the CLI prints them as a table or JSON.

Timing method: the operation runs ``number`` times per sample, ``repeat``
samples are taken alternately for ours and the baseline, and the best
sample counts (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import coincurve

from .guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    recover_signer,
    sign_claims,
    typed_data,
)

__all__ = ["BENCHMARKS", "Result", "run"]

# Throwaway test key (well known, never funded). Benchmarks only.
_TEST_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
_KEY = coincurve.PrivateKey(bytes.fromhex(_TEST_KEY[2:]))


@dataclass
class Result:
    """One benchmark: our figure, the baseline's, and the target."""

    id: str
    title: str
    unit: str
    ours: float
    baseline: float | None
    baseline_name: str
    target: str
    met: bool | None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.baseline else self.ours / self.baseline

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def _best_us(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def compare(
    ours: Callable[[], object], baseline: Callable[[], object] | None, number: int, repeat: int
) -> tuple[float, float | None]:
    """Best µs/op of ``ours`` and ``baseline``, sampled alternately."""
    best_ours = best_base = float("inf")
    for _ in range(repeat):
        best_ours = min(best_ours, _best_us(ours, number))
        if baseline is not None:
            best_base = min(best_base, _best_us(baseline, max(1, number // 10)))
    return best_ours, (None if baseline is None else best_base)


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
    ours, base = compare(lambda: recover_signer(signed, domain), baseline, *_sizes(quick))
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

    ours, base = compare(lambda: sign_claims(claims, _KEY, domain), baseline, *_sizes(quick))
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


def _sizes(quick: bool) -> tuple[int, int]:
    return (300, 3) if quick else (3000, 7)


BENCHMARKS: dict[str, Callable[[bool], Result]] = {
    "recover": bench_recover,
    "P6": bench_sign,
}


def run(only: list[str] | None = None, *, quick: bool = False) -> list[Result]:
    """Run the selected benchmarks (all by default) and return their results."""
    chosen = only or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise KeyError(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}"
        )
    return [BENCHMARKS[name](quick) for name in chosen]
