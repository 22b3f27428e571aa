"""A request that carries a payment: decode it, match it to an offer, settle and record it.

The steps between "this route is priced" and "run the handler" (docs/protocol.md, "Paying";
docs/architecture.md, "A paid request"): the throttle, an idempotent replay, the header
decoded and matched to the requirements the gate itself advertised (never the buyer's copy),
the ``before_settle`` hook, then settle-and-record (settle-before mode) or verify-and-reserve
(settle-after mode), and the :class:`~.types.Payment` handed to the handler.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from .._memo import ByIdentity
from ..core.store import Conflict
from ..errors import GuaranteeRejected, MalformedPayment, PaymentError, Reason
from ..evidence import hash_request
from ..facilitator import SettleResult, signed_from_payload
from ..guarantee import ValidationPolicy
from ..networks import get_network, parse_amount
from ..routes import Endpoint, Route
from ..wire import (
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    SettleResponse,
    decode_payment_header,
    encode_header,
)
from . import bundles, metered, settle, stages
from .challenge import DELIVERY_TAG, challenge, v1_requirements, v2_requirements
from .hooks import failure, seller_failed
from .types import (
    EXPOSE_HEADERS,
    PAID_CACHE_CONTROL,
    BodyTooLarge,
    Call,
    Flow,
    Paid,
    Payment,
    RequestView,
    Response,
    body_refused,
    error_response,
    for_shared_caches,
    no_store,
)

if TYPE_CHECKING:
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")


def version_of(request: RequestView) -> int | None:
    """The x402 version of the payment header the request carries, if any."""
    if request.header_values(PAYMENT_SIGNATURE_HEADER):
        return 2
    if request.header_values(X_PAYMENT_HEADER):
        return 1
    return None


def paid(
    gate: Gate,
    request: RequestView,
    route: Route,
    requirements: list[PaymentRequirements],
    endpoint: Endpoint | None = None,
    *,
    opens_stream: bool = True,
) -> Flow:
    """The challenge when no payment came; else the payment settled and recorded.

    Returns a :class:`Response` (a 402, 409, 429 or 503) or the :class:`Paid` state.
    ``opens_stream``: a metered route's payment opens its stream (not a later slice's, paid
    at the stream's pay endpoint).
    """
    config, throttle = gate.config, gate._throttle
    v2_values = request.header_values(PAYMENT_SIGNATURE_HEADER)
    v1_values = request.header_values(X_PAYMENT_HEADER)
    if not v2_values and not v1_values:
        return challenge(gate, request, route, requirements, Reason.PAYMENT_REQUIRED)
    sender = throttle.sender(request.client)
    wait = max(throttle.blocked(sender), 0.0)
    if wait > 0:
        return throttle.answer(wait)
    if config.idempotent_replay and len(v2_values) + len(v1_values) == 1:
        # before matching the offers: a payment taken before a repricing still replays
        version, header = (2, v2_values[0]) if v2_values else (1, v1_values[0])
        replayed = yield from _replay(gate, request, route, requirements, version, header)
        if replayed is not None:
            return replayed
    try:
        if len(v2_values) + len(v1_values) != 1:
            raise MalformedPayment("send exactly one payment header")
        version = 2 if v2_values else 1
        header = (v2_values or v1_values)[0]
        payload = decode_payment_header(header, expected_version=version)
        chosen = _match(payload, requirements)
        signed = signed_from_payload(payload, chosen)
    except PaymentError as exc:
        throttle.hit(sender)
        yield from failure(gate, request, exc)
        return challenge(
            gate, request, route, requirements, exc.reason, version=version_of(request)
        )
    payer = signed.claims.user_address
    wait = throttle.blocked(throttle.payer_key(payer, sender))
    if wait > 0:
        return throttle.answer(wait)
    header_hash = hashlib.sha256(header.encode("ascii", "replace")).hexdigest()
    stage = route.config.stage
    if stage is not None:  # staged work: this payer's job, at this stage (docs/protocol.md)
        refused = yield from stages.admit(gate, stage, request, payer)
        if refused is not None:
            return refused
    if config.before_settle is not None:
        try:
            yield Call(config.before_settle, (request, payload, chosen), blocking=False)
        except PaymentError as exc:
            yield from failure(gate, request, exc)
            return challenge(gate, request, route, requirements, exc.reason, version=version)
        except BodyTooLarge as exc:  # it read the buyer's body, too long to judge: nothing settled
            return error_response(exc.status, exc.reason, exc.message)
        except Exception:  # the seller's bug, not the buyer's: nothing settled (docs/operations.md)
            if refused := body_refused(request.read_body):  # unless it failed on a body too long
                return error_response(refused.status, refused.reason, refused.message)
            log.exception("before_settle raised for %s", route.key)
            return seller_failed()
    policy, delivery = _policy_of(chosen)
    base: dict[str, Any] = dict(
        route=route.key,
        method=request.method.upper(),
        path=request.path,
        query=request.query,
        header_version=version,
        header_hash=header_hash,
        pay_to=chosen.pay_to,
        amount=int(chosen.amount),
        asset=chosen.asset,
        network=chosen.network,
        settle_mode=config.settle,
        request_hash=hash_request(request),  # for evidence (docs/operations.md)
    )
    if config.settle == "before":
        try:
            result = yield settle.settle_and_record(gate, payload, chosen, base, signed)
        except PaymentError as exc:  # a remote settle's mark: one of this guarantee is under way
            if not config.idempotent_replay or exc.reason != Reason.REPLAYED_REQUEST_ID:
                raise
            replayed = yield from _replay(gate, request, route, requirements, version, header)
            if replayed is None and (yield Call(settle.settling, (gate, signed, chosen))):
                replayed = _in_progress()  # not answered yet: nothing recorded to look up
            if replayed is not None:
                return replayed
            raise
        if isinstance(result, SettleResult):  # refused
            if config.idempotent_replay and result.error_reason == Reason.REPLAYED_REQUEST_ID:
                # the same header at once, accepted for the other request: wait for it
                replayed = yield from _replay(gate, request, route, requirements, version, header)
                if replayed is not None:
                    return replayed
            throttle.refused(sender, payer, result.error_reason)
            yield from failure(
                gate, request, GuaranteeRejected(reason=result.error_reason or "rejected")
            )
            return challenge(
                gate,
                request,
                route,
                requirements,
                result.error_reason or "settle_failed",
                version=version,
                settle=result,
            )
        result, record_id = result
    else:
        verdict = yield Call(
            gate.facilitator.verify, (payload, chosen), afn=gate.facilitator.averify
        )
        if not verdict.is_valid:
            if config.idempotent_replay and verdict.invalid_reason == Reason.REPLAYED_REQUEST_ID:
                # the same header at once, served and settled meanwhile: answer as a replay
                replayed = yield from _replay(gate, request, route, requirements, version, header)
                if replayed is not None:
                    return replayed
            throttle.refused(sender, payer, verdict.invalid_reason)
            yield from failure(
                gate, request, GuaranteeRejected(reason=verdict.invalid_reason or "invalid")
            )
            return challenge(
                gate,
                request,
                route,
                requirements,
                verdict.invalid_reason or "invalid",
                version=version,
            )
        try:  # the record's unique header hash stops a replay before the handler runs
            record_id = yield Call(
                lambda: gate.records.begin(
                    **base,
                    settle_result={},
                    status="verified",
                    payer=payer,
                    # unique while in flight: another encoding of this guarantee waits
                    request_id=hex(signed.claims.req_id),
                    tab_id=hex(signed.claims.tab_id),
                )
            )
        except Conflict:
            if config.idempotent_replay:  # the same header at once: the other request's
                replayed = yield from _replay(gate, request, route, requirements, version, header)
                if replayed is not None:
                    return replayed
            return challenge(
                gate, request, route, requirements, Reason.REPLAYED_REQUEST_ID, version=version
            )
        result = None
    claims = signed.claims
    payment = Payment(
        payer=payer,
        amount=claims.amount,
        asset=claims.asset_address,
        network=chosen.network,
        pay_to=chosen.pay_to,
        guarantee_id=result.guarantee_id if result else None,
        request_id=hex(claims.req_id),
        tab_id=hex(claims.tab_id),
        x402_version=version,
        guarantee_version=claims.version,
        route=route.key,
        record_id=record_id,
        settled=result is not None,
        endpoint=endpoint,
        by_marker=route.marker,
    )
    if route.terms is not None:  # a bundle's units, a cap: the requirements it paid say
        bundles.annotate(payment, chosen.extra)
    settle.certificate_source(gate, payment, result)
    if config.after_settle is not None and result is not None:
        try:
            yield Call(config.after_settle, (request, result), blocking=False)
        except Exception:  # paid but not served: give the money back before answering
            log.exception("after_settle hook raised; refunding %s", result.guarantee_id)
            yield Call(settle.abandon, (gate, result, chosen.pay_to, record_id))
            return error_response(
                503, "seller_hook_failed", "the seller failed; the payment was voided"
            )
    state = Paid(
        payment, request, chosen, payload, header_hash, result, policy, delivery, route=route
    )
    refused = None
    try:  # paid, and the handler will not run if these fail: the payment is given back
        if stage is not None:
            refused = yield from stages.claim(gate, stage, request, payment)
        if refused is None and delivery and result is not None and claims.version == 2:
            gate._holds.add(state)  # this gate scores it when the response ends
        if refused is None and route.config.slices is not None and opens_stream:
            yield from metered.opened(gate, route, request, state)  # metered: slice 1 is this
    except Exception:
        gate._holds.discard(state)
        try:
            yield Call(settle.abandon, (gate, result, chosen.pay_to, record_id))
        except Exception:  # the store is down: the void was filed, or logged
            log.exception("could not record the refund of %s", payment.guarantee_id)
        raise
    if refused is not None:  # a concurrent request took the stage: nothing is charged
        yield Call(settle.abandon, (gate, result, chosen.pay_to, record_id, refused.status))
        return refused
    return state


def _match(
    payload: PaymentPayload | PaymentPayloadV1, requirements: list[PaymentRequirements]
) -> PaymentRequirements:
    """Our requirements the payment was made against (never the buyer's copy)."""
    if isinstance(payload, PaymentPayload):
        got = payload.accepted
        for req in requirements:
            if (
                got.scheme == req.scheme
                and got.network == req.network
                and int(got.amount) == int(req.amount)
                and got.asset.lower() == req.asset.lower()
                and got.pay_to.lower() == req.pay_to.lower()
            ):
                return _v2_view(req)  # the wire form, no internal marks
        raise PaymentError(reason=Reason.NO_MATCHING_REQUIREMENTS)
    claims = payload.payload.get("claims") if isinstance(payload.payload, dict) else None
    fits = [
        req
        for req in map(_v1_view, requirements)
        if payload.scheme == req.scheme
        and payload.network == req.network
        and (
            not isinstance(claims, dict)
            or str(claims.get("asset_address", "")).lower() == req.asset.lower()
        )
    ]
    if not fits:
        raise PaymentError(reason=Reason.NO_MATCHING_REQUIREMENTS)
    if isinstance(claims, dict) and len(fits) > 1:  # v1 names no offer: its claims' terms do
        for req in fits:
            if _terms_of(claims) == (req.pay_to.lower(), int(req.amount)):
                return req
    return fits[0]  # checked against it, the claims' mismatch is the refusal's reason


def _terms_of(claims: dict[str, Any]) -> tuple[str, int] | None:
    """The recipient and amount a v1 payment's claims name, or None when unreadable."""
    try:
        return str(claims.get("recipient_address", "")).lower(), parse_amount(claims["amount"])
    except (KeyError, TypeError, ValueError):
        return None


def _read_policy(chosen: PaymentRequirements) -> tuple[ValidationPolicy | None, bool]:
    """The validation policy ``chosen`` carries, and whether it is the delivery policy."""
    policy = ValidationPolicy.from_extra(chosen.extra, get_network(chosen.network).chain_id)
    delivery = (
        policy is not None and policy.tag == DELIVERY_TAG and policy.validator == chosen.pay_to
    )
    return policy, delivery


# A route's requirements are built once (gate/challenge.py): their views and policy too.
_v2_view: ByIdentity[PaymentRequirements, PaymentRequirements] = ByIdentity(
    lambda req: v2_requirements([req])[0]
)
_v1_view: ByIdentity[PaymentRequirements, PaymentRequirements] = ByIdentity(
    lambda req: v1_requirements([req])[0]
)
_policy_of: ByIdentity[PaymentRequirements, tuple[ValidationPolicy | None, bool]] = ByIdentity(
    _read_policy
)


def _replay(
    gate: Gate,
    request: RequestView,
    route: Route,
    requirements: list[PaymentRequirements],
    version: int,
    header: str,
) -> Flow:
    """A payment header's earlier request (idempotent replay, docs/operations.md): its
    stored response, a 409, or the refusal of another request; None when never seen."""
    digest = hashlib.sha256(header.encode("ascii", "replace")).hexdigest()
    found = yield Call(gate.records.by_header, (digest,))
    if found is None:
        return None
    paid_for = found[0]  # a record from before the query was kept: any query
    query = request.query if paid_for.query is None else paid_for.query
    asked = (route.key, request.method.upper(), request.path, request.query)
    if (paid_for.route, paid_for.method, paid_for.path, query) != asked:
        return challenge(  # a payment replays only the request it paid for
            gate, request, route, requirements, Reason.REPLAYED_REQUEST_ID, version=version
        )
    return _replayed(found, version)


def _replayed(found: Any, version: int) -> Response:
    """A payment header seen before (idempotent replay): its stored response, or a 409."""
    record, stored = found
    if stored is None or record.status != "delivered":
        # still being served; or ended without a response kept: delivered too large to keep,
        # refunded, or labelled at start-up after its process died (an outcome, no delivery)
        if record.delivered_at is None and record.outcome is None:
            return _in_progress()
        return error_response(
            409,
            "replay_unavailable",
            "this payment was already used; its response cannot be replayed",
        )
    headers, body = stored
    cache = next((v for k, v in headers if k.lower() == "cache-control"), None)
    # a cookie is the first caller's, kept by an older release too (docs/operations.md)
    drop = ("content-length", "set-cookie") + (() if no_store(cache) else ("cache-control",))
    headers = [(k, v) for k, v in headers if k.lower() not in drop and not for_shared_caches(k)]
    if not no_store(cache):  # paid content, replayed: still never for a shared cache
        headers.append(("cache-control", PAID_CACHE_CONTROL))
    settle_response = SettleResponse.model_validate(record.settle_result)
    name = PAYMENT_RESPONSE_HEADER if version == 2 else X_PAYMENT_RESPONSE_HEADER
    headers.append((name.lower(), encode_header(settle_response)))
    headers.append(("access-control-expose-headers", EXPOSE_HEADERS))
    return Response(record.http_status or 200, headers, body)


def _in_progress() -> Response:
    return error_response(
        409,
        "payment_in_progress",
        "this payment's request is still being served; send it again once it has ended",
    )
