"""Reading a remote facilitator's answers: bounded in size, checked against what was paid.

An answer that cannot be used, to a call that was sent, leaves the call's effect unknown: the
:class:`~fourmica_x402.errors.Unavailable` raised for it says ``maybe_applied``, and a settle
in doubt is voided later (docs/operations.md, "A remote facilitator").
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .._eth import parse_address
from .._json import loads_checked, no_duplicates
from ..core.models import Tab
from ..errors import MalformedPayment, Unavailable
from ..guarantee import SignedGuarantee, guarantee_id
from ..networks import get_network, parse_amount
from ..wire import PaymentPayload, PaymentPayloadV1, PaymentRequirements, VerifyResponse

__all__ = [
    "ANSWER_LIMIT",
    "abounded",
    "answer_json",
    "bounded",
    "doubt",
    "reason_code",
    "settled",
    "tab_of",
    "verdict",
]

log = logging.getLogger("fourmica_x402.facilitator")

#: A stable reason code; and a certificate's parts, with the longest claims passed on (a
#: G-v2 certificate's claims are well under 1 KiB).
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_CLAIMS_LIMIT = 4096

#: The largest answer read from a facilitator (a settle answer with its certificate is a few
#: KiB); a longer one is not read on, and a call it answers may have been applied.
ANSWER_LIMIT = 1 << 20


def doubt(message: str) -> Unavailable:
    """The call was sent and its answer is unusable: it may have been applied."""
    error = Unavailable(message)
    error.maybe_applied = True
    return error


def answer_json(content: bytes) -> Any:
    """An answer's JSON; ``ValueError`` when malformed, nested too deeply, or naming a key twice
    in one object: parsers differ on which one wins (``{"success": false, "success": true}``),
    so neither is believed (docs/architecture.md, "JSON from another party")."""
    return loads_checked(content, object_pairs_hook=no_duplicates)


def bounded(chunks: Any) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > ANSWER_LIMIT:
            raise doubt(f"facilitator answer longer than {ANSWER_LIMIT} bytes")
    return bytes(body)


async def abounded(chunks: Any) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > ANSWER_LIMIT:
            raise doubt(f"facilitator answer longer than {ANSWER_LIMIT} bytes")
    return bytes(body)


def settled(
    data: Any, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
) -> Any:
    """The settle answer, read against what was paid: the guarantee, payer and network are
    the signed claims' (an answer naming others is logged, not believed)."""
    from . import SettleResult

    if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
        raise doubt("facilitator settle answer is not an object with a boolean success")
    network = requirements.network
    if not data["success"]:
        said = data.get("error") or data.get("errorReason")
        return SettleResult(
            success=False, network=network, error_reason=reason_code(said, "settle_failed")
        )
    try:
        claims = SignedGuarantee.from_json(payload.payload).claims
    except MalformedPayment:
        claims = None
    named = data.get("transaction") if isinstance(data.get("transaction"), str) else None
    payer = data.get("payer") if isinstance(data.get("payer"), str) else None
    if claims is not None:
        chain_id = get_network(network).chain_id
        gid = "0x" + guarantee_id(chain_id, claims.tab_id, claims.req_id).hex()
        for what, said, paid in (("guarantee", named, gid), ("payer", payer, claims.user_address)):
            if said and said.lower() != paid.lower():
                log.warning(
                    "facilitator's settle answer names %s %.80r; the payment's is %s",
                    what,
                    said,
                    paid,
                )
        named, payer = gid, claims.user_address
    if not named:  # nothing to refund or score it by
        raise doubt("facilitator settle answer names no guarantee")
    certificate = _certificate(data.get("certificate"))
    return SettleResult(
        success=True,
        network=network,
        payer=payer,
        guarantee_id=named,
        tab_id=claims.tab_id if claims else None,
        req_id=claims.req_id if claims else None,
        amount=claims.amount if claims else None,
        state=data.get("state") if isinstance(data.get("state"), str) else None,
        certificate=certificate,
    )


def refused_key(status: int, reason: object, message: object) -> object:
    """A facilitator's refusal ``reason``, unless it refused the seller's key (401, or a key
    for another payTo): that is the seller's to fix, not the buyer's payment, so the seller's
    log says what to do and the buyer reads ``facilitator_error`` (docs/operations.md, "Keys")."""
    if status != 401 and reason != "key_not_for_address":
        return reason
    log.error(
        "the facilitator refused this seller's key (%s %.100s): give HttpFacilitator "
        "headers={'Authorization': 'Bearer <key>'} with a key the service holds for this "
        "seller's payTo",
        status,
        reason or message,
    )
    return "facilitator_error"


def reason_code(said: object, default: str) -> str:
    """A facilitator's refusal reason as the buyer will read it: a stable snake_case code
    (docs/protocol.md, "Reason codes"); other text is logged (shortened) and ``default``."""
    if isinstance(said, str) and _CODE.fullmatch(said):
        return said
    if said:
        log.info("facilitator refused with %.200r; answered as %s", said, default)
    return default


def _certificate(value: object) -> dict[str, str] | None:
    """The certificate of a settle answer in the Core's format, ``{"claims": "0x…",
    "signature": "0x…"}`` (docs/protocol.md, "Certificates"); anything else is left out
    (it would travel to the buyer in a response header)."""
    if value is None:
        return None
    if isinstance(value, dict):
        claims, signature = value.get("claims"), value.get("signature")
        if (
            isinstance(claims, str)
            and isinstance(signature, str)
            and _HEX.fullmatch(claims)
            and len(claims) % 2 == 0
            and len(claims) <= 2 + 2 * _CLAIMS_LIMIT
            and _HEX.fullmatch(signature)
            and len(signature) == 2 + 2 * 96
        ):
            return {"claims": claims, "signature": signature}
    log.warning("facilitator's settle answer carries no certificate in the Core's format")
    return None


def verdict(data: Any) -> VerifyResponse:
    """The verify answer; a refusal's reason, as a settle's, reaches the buyer only as a
    snake_case code (docs/operations.md, "A remote facilitator"), else ``settle_failed``."""
    try:
        answer = VerifyResponse.model_validate(data, strict=True)  # "yes" is not true
    except ValueError:  # pydantic's ValidationError is one
        raise Unavailable("facilitator verify answer is not a verdict") from None
    if answer.is_valid:
        return answer
    said = reason_code(answer.invalid_reason, "settle_failed")
    return answer.model_copy(update={"invalid_reason": said})


def _seconds(value: Any) -> int:
    """A whole number of seconds as JSON carries it (not a bool, a fraction or a string)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"not a number of seconds: {value!r:.40}")
    return value


def tab_of(pick: Any, network: str, version: int) -> Tab:
    """A tab answer read through ``pick`` (the first of its names present); ValueError or
    TypeError for one that is malformed."""
    ttl = _seconds(pick("ttlSeconds", "ttl_seconds"))
    if ttl == 0:
        raise ValueError("a tab lasts some time")
    return Tab(
        tab_id=parse_amount(pick("tabId", "tab_id")),
        user_address=parse_address(pick("userAddress", "user_address")),
        recipient_address=parse_address(pick("recipientAddress", "recipient_address")),
        network=network,
        asset_address=parse_address(pick("assetAddress", "asset_address")),
        guarantee_version=version,
        start_timestamp=_seconds(pick("startTimestamp", "start_timestamp")),
        ttl_seconds=ttl,
        next_req_id=parse_amount(pick("nextReqId", "next_req_id", "reqId", "req_id")),
    )
