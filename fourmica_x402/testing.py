"""Public test helpers: throwaway keys, a funded sandbox, payment factories.

Every key here is a publicly known TEST key. Never fund one on a real chain.

    >>> core = Core(tmp_path / "core.db")                                # doctest: +SKIP
    >>> buyer = TestBuyer.new()                                         # doctest: +SKIP
    >>> core.deposit(buyer.address, 1_000_000, network=NETWORK)         # doctest: +SKIP
    >>> signed, expected = buyer.pay(core, SELLER, 10_000)              # doctest: +SKIP
    >>> core.accept(signed, expected).state                             # doctest: +SKIP
    'payable'
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import coincurve

from .guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    address_of,
    sign_claims,
)
from .networks import default_asset, get_network

if TYPE_CHECKING:
    from .core import Core
    from .core.models import Expected, Tab

__all__ = [
    "NETWORK",
    "TEST_KEYS",
    "FakeClock",
    "ShiftedClock",
    "TestBuyer",
    "http_scope",
    "paid_headers",
    "payment_header",
    "slowed_settle",
    "test_policy",
]

#: The network tests use by default (Base Sepolia).
NETWORK = "eip155:84532"

#: Well-known throwaway TEST keys (Hardhat/Anvil defaults and the vectors' key). Never fund them.
TEST_KEYS = (
    "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
)


class FakeClock:
    """A clock tests move by hand: ``clock()`` reads it, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = float(int(time.time()) if start is None else start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class ShiftedClock:
    """Real time plus an offset tests can move: ``clock.advance(3600)`` jumps an hour ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def payment_header(
    buyer: TestBuyer,
    requirements: Any,
    tab: dict[str, Any],
    *,
    version: int = 2,
    resource: Any = None,
    timestamp: int | None = None,
    amount: int | None = None,
    recipient: str | None = None,
    asset: str | None = None,
    tab_id: int | None = None,
    policy: ValidationPolicy | None = None,
    sign_with: TestBuyer | None = None,
    **claim_changes: Any,
) -> tuple[str, str]:
    """``(header name, value)`` paying ``requirements`` on ``tab`` (a tab-endpoint JSON answer).

    G-v2 when the requirements carry a validation policy, else G-v1 — as docs/protocol.md says a
    buyer does. To make deliberately bad payments: ``amount``/``recipient``/``asset``/
    ``tab_id``/``policy`` build consistent claims with other values; ``claim_changes`` tamper with
    the built claims (before signing); ``sign_with`` signs with another key.
    """
    from .wire import PaymentPayload, PaymentPayloadV1, encode_header

    network = get_network(requirements.network)
    policy = policy or ValidationPolicy.from_extra(requirements.extra, network.chain_id)
    base: dict[str, Any] = dict(
        user=buyer.address,
        recipient=recipient or requirements.pay_to,
        tab_id=int(tab["tabId"], 16) if tab_id is None else tab_id,
        req_id=int(tab["nextReqId"], 16),
        amount=int(requirements.amount) if amount is None else amount,
        asset=asset or requirements.asset,
        timestamp=int(time.time()) if timestamp is None else timestamp,
    )
    claims = GuaranteeClaims.v2(**base, policy=policy) if policy else GuaranteeClaims.v1(**base)
    if claim_changes:
        claims = dataclasses.replace(claims, **claim_changes)
    signed = (sign_with or buyer).sign(claims, chain_id=network.chain_id)
    if version == 2:
        envelope: Any = PaymentPayload(
            payload=signed.to_json(), accepted=requirements, resource=resource
        )
        return "PAYMENT-SIGNATURE", encode_header(envelope)
    envelope = PaymentPayloadV1(
        scheme=requirements.scheme, network=requirements.network, payload=signed.to_json()
    )
    return "X-PAYMENT", encode_header(envelope)


def paid_headers(client: Any, buyer: TestBuyer, challenge: Any) -> dict[str, str]:
    """The header paying ``challenge`` (a 402 read through ``client``, any httpx-style client
    or test client): the buyer's tab opened at its ``tabEndpoint``, the guarantee signed."""
    from .wire import decode_payment_required

    offer = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
    body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": offer.to_dict()}
    name, value = payment_header(
        buyer, offer, client.post(offer.extra["tabEndpoint"], json=body).json()
    )
    return {name: value}


def http_scope(
    method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None, **extra: Any
) -> dict[str, Any]:
    """An ASGI HTTP scope as a server hands it over (``host: testserver``, then ``headers``),
    for driving an ASGI app by hand in a test."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        **extra,
    }


def test_policy(chain_id: int = 84532, validator: str | None = None) -> ValidationPolicy:
    """A G-v2 validation policy on the sandbox registry (test use)."""
    from .core import SANDBOX_REGISTRY

    return ValidationPolicy(
        registry=SANDBOX_REGISTRY,
        validator=validator or "0x4444444444444444444444444444444444444444",
        validator_agent_id=7,
        min_score=80,
        job_hash=b"\xaa" * 32,
        chain_id=chain_id,
        tag="",
    )


test_policy.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
payment_header.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TestBuyer:
    """A buyer holding a throwaway key."""

    __test__ = False  # not a pytest test class

    key: coincurve.PrivateKey
    address: str

    @classmethod
    def new(cls) -> TestBuyer:
        """A fresh random key (never funded anywhere but a sandbox)."""
        return cls.from_key(secrets.token_bytes(32))

    @classmethod
    def from_key(cls, key: str | bytes) -> TestBuyer:
        raw = (
            bytes.fromhex(key[2:] if isinstance(key, str) and key.startswith("0x") else key)
            if isinstance(key, str)
            else key
        )
        private = coincurve.PrivateKey(raw)
        return cls(private, address_of(private))

    def sign(
        self,
        claims: GuaranteeClaims,
        *,
        chain_id: int = 84532,
        name: str = "4mica",
        version: str = "1",
    ) -> SignedGuarantee:
        return sign_claims(claims, self.key, Eip712Domain(chain_id, name, version))

    def claims(
        self,
        tab: Tab,
        amount: int,
        *,
        req_id: int | None = None,
        timestamp: int | None = None,
        policy: ValidationPolicy | None = None,
    ) -> GuaranteeClaims:
        base: dict[str, Any] = dict(
            user=self.address,
            recipient=tab.recipient_address,
            tab_id=tab.tab_id,
            req_id=tab.next_req_id if req_id is None else req_id,
            amount=amount,
            asset=tab.asset_address,
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
        if policy is None:
            return GuaranteeClaims.v1(**base)
        return GuaranteeClaims.v2(**base, policy=policy)

    def pay_challenge(self, core: Core, payment_required: str) -> tuple[str, str]:
        """``(header name, value)`` paying the first offer of a ``PAYMENT-REQUIRED`` header on
        a tab ``core`` opens, in the guarantee version the offer asks for (G-v2 with a policy)."""
        from .wire import decode_payment_required

        req = decode_payment_required(payment_required).accepts[0]
        version = 2 if "validatorAddress" in req.extra else 1
        tab = core.open_tab(
            self.address,
            req.pay_to,
            network=req.network,
            asset=req.asset,
            guarantee_version=version,
        )
        return payment_header(self, req, tab.to_json())

    def pay(
        self,
        core: Core,
        seller: str,
        amount: int,
        *,
        network: str = NETWORK,
        asset: str | None = None,
        policy: ValidationPolicy | None = None,
        timestamp: int | None = None,
        **changes: Any,
    ) -> tuple[SignedGuarantee, Expected]:
        """Open a tab on ``core``, sign a guarantee for ``amount``, return it with what the seller expects.

        ``changes`` replace claim fields after building (to make a bad guarantee on purpose).
        """
        from .core.models import Expected

        asset = asset or default_asset(network).address
        tab = core.open_tab(
            self.address,
            seller,
            network=network,
            asset=asset,
            guarantee_version=2 if policy else 1,
        )
        ts = int(core.clock()) if timestamp is None else timestamp
        claims = self.claims(tab, amount, timestamp=ts, policy=policy)
        if changes:
            claims = dataclasses.replace(claims, **changes)
        signed = self.sign(claims, chain_id=get_network(network).chain_id)
        return signed, Expected(
            network=network, pay_to=seller, asset=asset, amount=amount, policy=policy
        )


def slowed_settle(gate: Any, seconds: float = 0.5) -> threading.Event:
    """Make ``gate``'s (sync) settle wait ``seconds`` before the facilitator answers, as a slow
    facilitator does (to cancel a request while its settle is out); the event is set as each
    settle starts."""
    real, started = gate.facilitator.settle, threading.Event()

    def settle(payload: Any, chosen: Any) -> Any:
        started.set()
        time.sleep(seconds)
        return real(payload, chosen)

    gate.facilitator.settle = settle
    return started
