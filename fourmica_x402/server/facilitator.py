"""The x402-4mica facilitator API (docs/protocol.md, "Endpoints"): ``GET /supported``,
``GET /health``, ``POST /tabs``, ``POST /verify``, ``POST /settle``.

Official sellers can use the service as their facilitator, so these bodies are the official
ones, errors included: ``/verify`` and ``/settle`` always answer 200 with ``isValid``/``success``
false and the stable reason (a refused ``/settle`` carries it in ``errorReason`` too, where
x402's clients read it), and ``/tabs`` refuses with ``{"error": text, "reason": code}``. On a
service with keys ``/settle`` also answers 401/403 to a caller whose key does not act for the
payment's ``payTo`` (docs/operations.md, "Keys").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fourmica_x402._eth import parse_address
from fourmica_x402.coreapi import MAX_TAB_TTL, requested_ttl, requested_version
from fourmica_x402.errors import FourmicaError, MalformedPayment, PaymentError, TabLimited
from fourmica_x402.networks import get_network
from fourmica_x402.wire import (
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
    decode_payment_header,
)

from .base import Call, Reply, Result, tab_limited

if TYPE_CHECKING:
    from .context import Service

__all__ = ["MAX_TAB_TTL", "health", "payment_args", "settle", "supported", "tabs", "verify"]

log = logging.getLogger("fourmica_x402.service")


def payment_args(body: Any) -> tuple[PaymentPayload | PaymentPayloadV1, PaymentRequirements]:
    """The payload and requirements of a ``/verify`` or ``/settle`` body (x402 v1 or v2). The
    payload is ``paymentPayload`` or, as sdk-4mica's ``X402Flow`` sends it, ``paymentHeader``:
    the buyer's header value as it came (docs/protocol.md, "Endpoints")."""
    if not isinstance(body, dict):
        raise MalformedPayment("body must be a JSON object")
    try:
        raw_req = body["paymentRequirements"]
        if "paymentPayload" not in body and "paymentHeader" in body:
            payload = decode_payment_header(body["paymentHeader"])
        else:
            raw_payload = body["paymentPayload"]
            version = (
                raw_payload.get("x402Version", body.get("x402Version", 1))
                if isinstance(raw_payload, dict)
                else 0
            )
            model = PaymentPayload if version == 2 else PaymentPayloadV1
            payload = model.model_validate(raw_payload)
        requirements = (
            PaymentRequirements.model_validate(raw_req)
            if isinstance(raw_req, dict) and "amount" in raw_req
            else PaymentRequirementsV1.model_validate(raw_req).to_v2()
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedPayment(f"invalid facilitator request: {str(exc)[:200]}") from None
    return payload, requirements


def supported(service: Service, call: Call) -> Reply:
    return 200, {"kinds": service.facilitator.supported(), "extensions": [], "signers": {}}


def health(service: Service, call: Call) -> Reply:
    return 200, {"status": "ok"}


def _tab_refusal(message: str, reason: str = "invalid_request") -> Reply:
    """A ``/tabs`` refusal in the official shape, ``{"error": text, "reason": code}``
    (docs/protocol.md, "Reason codes")."""
    return 400, {"error": message, "reason": reason}


def _known_network(network: Any) -> bool:
    try:
        get_network(network)
    except (ValueError, TypeError):  # ConfigurationError: not a network the service knows
        return False
    return True


def tabs(service: Service, call: Call) -> Result:
    body = call.body
    if not isinstance(body, dict):
        return _tab_refusal("body must be a JSON object")
    # the official facilitator's aliases too: networkId / network_id, assetAddress
    net = body.get("network") or body.get("networkId") or body.get("network_id") or service.network
    if not isinstance(net, str) or not _known_network(net):
        return _tab_refusal(f"unknown network {net!r:.60}")
    try:
        user = parse_address(body.get("userAddress"))
    except ValueError as exc:
        return _tab_refusal(str(exc), "invalid_user_address")
    admission = service.new_tabs.admit(user, call.client, service.keys.acts_for(call))
    tab = None
    try:
        version = body.get("guaranteeVersion")
        if version is None:
            version = body.get("x402Version")
        elif body.get("x402Version") not in (None, version):
            raise ValueError(
                f"guaranteeVersion {version!r:.20} does not match x402Version "
                f"{body.get('x402Version')!r:.20}"
            )
        tab = service.core.open_tab(
            user,
            parse_address(body.get("recipientAddress")),
            network=net,
            asset=body.get("erc20Token") or body.get("assetAddress") or None,
            guarantee_version=requested_version(version, "guaranteeVersion"),
            ttl_seconds=requested_ttl(body.get("ttlSeconds"), "ttlSeconds"),
            admit_new=admission,
        )
    except TabLimited as exc:
        return tab_limited(exc)
    except FourmicaError as exc:
        # The official tab-endpoint shape: clients read ``reason`` (docs/operations.md).
        return 400 if exc.status < 500 else 503, {"error": exc.public(), "reason": exc.reason}
    except (ValueError, TypeError) as exc:
        return _tab_refusal(str(exc))
    finally:
        admission.end(tab is not None and tab.next_req_id == 0)
    return 200, tab.to_json()


def verify(service: Service, call: Call) -> Reply:
    try:
        payload, requirements = payment_args(call.body)
        verdict = service.facilitator.verify(payload, requirements)
    except PaymentError as exc:
        return 200, {"isValid": False, "invalidReason": exc.reason}
    return 200, {
        "isValid": verdict.is_valid,
        "invalidReason": verdict.invalid_reason,
        "payer": verdict.payer,
    }


def settle(service: Service, call: Call) -> Reply:
    answer: dict[str, Any]
    if (refused := service.keys.settles_for(call)) is not None:
        return refused
    try:
        payload, requirements = payment_args(call.body)
        if (refused := service.keys.settles_for(call, requirements.pay_to)) is not None:
            return refused
        result = service.facilitator.settle(payload, requirements)
        certificate = (
            _certificate(service, result.guarantee_id)
            if result.success and result.guarantee_id
            else None
        )
        answer = {
            "success": result.success,
            "error": result.error_reason,
            "txHash": None,
            "networkId": result.network,
            "network": result.network,
            "transaction": result.guarantee_id or "",
            "payer": result.payer,
            "certificate": certificate,
        }
    except PaymentError as exc:
        answer = {
            "success": False,
            "error": exc.reason,
            "txHash": None,
            "networkId": service.network,
            "network": service.network,
            "transaction": "",
            "certificate": None,
        }
    if not answer["success"]:
        # The official seller reads a full SettleResponse (this one: ``network`` and
        # ``transaction`` are set) through x402's model, whose code field is ``errorReason``.
        answer["errorReason"] = answer["error"]
    service.metrics.settled(bool(answer["success"]), answer.get("error"))
    return 200, answer


def _certificate(service: Service, guarantee_id: str) -> dict[str, Any] | None:
    """The certificate of a guarantee this settle accepted, or None when it cannot be made now.

    The acceptance is committed already: the answer must say so (a seller told otherwise
    would not deliver, and the buyer would be charged for nothing). A certificate is made on
    demand later (``GET /core/tabs/{tab}/guarantees/{req}``); one that cannot be made because
    the guarantee was refunded meanwhile never will be (docs/protocol.md, "Endpoints")."""
    try:
        return service.core.certify(guarantee_id).to_json()
    except FourmicaError as exc:  # the database busy past its timeout; refunded meanwhile
        log.warning("settled %s without its certificate: %s", guarantee_id, exc)
    except Exception:
        log.exception("settled %s without its certificate", guarantee_id)
    return None
