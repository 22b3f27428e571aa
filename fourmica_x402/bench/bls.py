"""The Core's certificate signature (``certify``): blspy, which the Core uses, against the
blst bindings (pyblst), on one real certificate message.

Two things decide which library signs (docs/architecture.md, "Certificates"): the time of one
signature, and whether a thread that signs lets the serving thread run meanwhile (the library
releases the GIL) or stops it. The second is measured as the share of a pure-Python loop's
speed the main thread keeps while another thread signs without pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from blspy import BasicSchemeMPL

from ..core.certs import Operator
from ..guarantee import certificate_message
from .common import Result, Skipped, _best_us
from .signatures import _sample_claims

__all__ = ["bench_certify"]

#: blspy's BasicSchemeMPL ciphersuite (signatures in G2, hashed to the curve with this tag).
_DST = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_"
#: Throwaway operator seed for benchmarks only (never a real Core's key).
_SEED = bytes(range(32))


def _pyblst_signer(message: bytes) -> Callable[[], bytes] | None:
    """pyblst signing ``message`` with the :data:`_SEED` key, or None when it is not installed."""
    try:
        from pyblst import BlstP2Element
    except ImportError:
        return None
    secret = int.from_bytes(bytes(BasicSchemeMPL.key_gen(_SEED)), "big")  # as Operator derives it

    def sign() -> bytes:
        return bytes(BlstP2Element().hash_to_group(message, _DST).scalar_mul(secret).compress())

    return sign


def _best_of(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(_best_us(fn, number) for _ in range(repeat))


def _spin(seconds: float) -> int:
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count


def _share_kept(sign: Callable[[], object], seconds: float) -> float:
    """The main thread's Python speed while a thread signs, over its speed alone (≈1: the
    library lets it run; ≈0.5 or less: the two take turns on the GIL)."""
    alone = _spin(seconds)
    stop = threading.Event()
    failed: list[BaseException] = []

    def signing() -> None:
        try:
            while not stop.is_set():
                sign()
        except BaseException as exc:  # reported below: a share measured without signing lies
            failed.append(exc)

    worker = threading.Thread(target=signing, daemon=True)
    worker.start()
    try:
        shared = _spin(seconds)
    finally:
        stop.set()
        worker.join()
    if failed:
        raise failed[0]
    return shared / alone


def bench_certify(quick: bool) -> Result:
    """certify: the Core's BLS signature on one certificate, blspy vs pyblst (blst)."""
    claims, _, _ = _sample_claims()
    operator = Operator(_SEED)
    message = certificate_message(claims, bytes(32), claims.amount)
    ours = operator.certify(message).signature
    if not operator.verify(message, ours):
        raise Skipped("blspy did not verify its own signature")

    def sign() -> bytes:
        return operator.sign(message)

    number, repeat = (10, 2) if quick else (100, 5)
    seconds = 0.2 if quick else 1.0
    notes: dict[str, object] = {"gil_share_kept_blspy": round(_share_kept(sign, seconds), 2)}
    other = _pyblst_signer(message)
    base = None
    if other is None:
        notes["pyblst"] = "not installed (pip install 'fourmica-x402[bench]' compares it)"
    else:
        # BLS signatures are deterministic: the same bytes, so py_ecc verifies both alike.
        notes["same_signature"] = other() == ours
        base = _best_of(other, number, repeat)
        notes["gil_share_kept_pyblst"] = round(_share_kept(other, seconds), 2)
    mine = _best_of(sign, number, repeat)
    return Result(
        id="certify",
        title="the Core's BLS certificate signature",
        unit="µs",
        ours=mine,
        baseline=base,
        baseline_name="pyblst (blst): hash_to_group + scalar_mul",
        target="≤ pyblst × 1.1, same bytes",
        met=None if base is None else mine <= base * 1.1 and notes["same_signature"] is True,
        notes=notes,
    )
