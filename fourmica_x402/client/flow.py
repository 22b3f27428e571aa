"""The buyer's decision flow, written once and driven by the sync and async transports.

On a 402: read the challenge (v2 header first, v1 body otherwise) → choose an
offer → apply the spending policy (before signing) → open a tab → read the
signing parameters (cached per Core URL) → sign G-v1 or G-v2 → retry **once**
→ attach a receipt (with the Core's certificate, checked, when the seller passed one on).
The steps from the offer to the signature are :class:`~._steps.Buyer`'s, shared with the x402
client scheme. The flow yields what it needs (:class:`Send`, :class:`Read`, :class:`Approve`);
the drivers in :mod:`.transport` (httpx) and :mod:`.requests_adapter` (requests) perform it.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import coincurve
import httpx

from .._eth import parse_address
from .._json import loads
from ..errors import InsufficientCollateral, MalformedPayment, PaymentFailed
from ..guarantee import SignedGuarantee, guarantee_id
from ..networks import dollar_assets, find_asset, get_network, parse_amount
from ..wire import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    SCHEME,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequiredV1,
    PaymentRequirements,
    ResourceInfo,
    decode_header_json,
    decode_payment_required,
    encode_header,
)
from ._steps import (
    Approve,
    Buyer,
    CoreParams,
    Prepared,
    Read,
    Send,
    Steps,
    offered,
)
from .answers import UNPAID_KEY, AnswerTooLarge
from .certificates import verify_certificate
from .keys import BuyerKey
from .policy import SpendingPolicy
from .receipts import Receipt, ReceiptLedger
from .receipts import paid as report_paid

__all__ = ["Approve", "BuyerFlow", "Read", "Send"]

RECEIPT_KEY = "fourmica_receipt"
#: Set on the caller's request when its paid answer was a redirect: a weak reference to that
#: request. HTTP clients copy a request's extensions into the redirects they follow, so a hop
#: (another request object carrying it) that asks for payment again is refused: one call pays
#: once. The same request sent again is a call of its own (docs/buyer.md, "Redirects").
PAID_CALL_KEY = "fourmica_paid_call"
#: Set on the caller's request when its paid answer was 401 or 407: an httpx ``Auth`` flow
#: sends that same request again (with new credentials) within the one call, so a 402 on that
#: next send is refused, not paid a second time (docs/buyer.md, "Redirects").
_AUTH_REFUSED_KEY = "fourmica_paid_auth_refused"
#: Set with :data:`PAID_CALL_KEY`: the paid answer's receipt, which the hops' answers carry
#: too, so the response a redirected call ends with shows what the call paid.
CALL_RECEIPT_KEY = "fourmica_call_receipt"
#: Set by a metered stream on a slice's payment: the receipt of the stream's first slice. Only
#: an offer on its terms (payTo, network, asset) at no more than its amount is paid: a seller
#: cannot raise the price of a stream it sold (docs/buyer.md, "Metered streams").
TERMS_KEY = "fourmica_terms"
#: Headers the paid retry does not copy from the caller's request (see ``_retry``).
_FRAMING = (b"content-length", b"transfer-encoding")


#: Errors that say the request never left: no connection could be opened, or none was free.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Set (True) on another HTTP client's error by its adapter when the request never left: the
#: caller still gets that error, of its own class.
NEVER_SENT_MARK = "fourmica_never_sent"


def redirected_after_payment(request: httpx.Request) -> bool:
    """Whether ``request`` is a redirect hop of a call that was already paid."""
    mark = request.extensions.get(PAID_CALL_KEY)
    return mark is not None and mark() is not request


def _within_paid_call(request: httpx.Request, response: httpx.Response) -> bool:
    """Whether ``request`` was sent again by an ``Auth`` flow within a call already paid.

    The mark lasts while the answers are 401/407 (the flow may try more credentials); a
    redirect carries it to the hops (:data:`PAID_CALL_KEY`); a hop of a paid call answered
    401/407 marks the call for the flow's next send. Any other answer ends it: the same
    request sent later is a call of its own."""
    extensions = request.extensions
    paid = bool(extensions.pop(_AUTH_REFUSED_KEY, False))
    refused = response.status_code in (401, 407)
    if refused and paid:
        extensions[_AUTH_REFUSED_KEY] = True
    elif refused and redirected_after_payment(request):  # the flow sends the call's request
        caller = extensions[PAID_CALL_KEY]()  # (a hop holds a copy of its extensions)
        if caller is not None:
            caller.extensions[_AUTH_REFUSED_KEY] = True
    elif paid and response.has_redirect_location:
        extensions[PAID_CALL_KEY] = weakref.ref(request)
    return paid


Flow = Steps[httpx.Response]


@dataclass(frozen=True)
class _Challenge:
    offer: PaymentRequirements
    version: int
    resource: ResourceInfo | None


class BuyerFlow(Buyer):
    """Everything a paying client knows: its key, its policy, its receipts."""

    policy: SpendingPolicy

    def __init__(
        self,
        key: str | bytes | coincurve.PrivateKey | BuyerKey,
        *,
        policy: SpendingPolicy | None = None,
        ledger: ReceiptLedger | None = None,
    ) -> None:
        """``key``: hex, 32 bytes, or a :class:`~.keys.BuyerKey` (:func:`~.keys.load_key`
        reads one from a keystore file or an environment variable). ``ledger`` defaults to
        the policy's ledger when it has one, else an in-memory one."""
        super().__init__(key, policy=policy or SpendingPolicy(), ledger=ledger)

    def run(self, request: httpx.Request) -> Flow:
        if not redirected_after_payment(request):  # a call of its own: an earlier one's
            request.extensions.pop(PAID_CALL_KEY, None)  # marks (this request sent again)
            request.extensions.pop(CALL_RECEIPT_KEY, None)  # are not this call's
        response = yield Send(request)
        auth_retry = _within_paid_call(request, response)
        # A HEAD's answer has no body to deliver, and sellers never settle a payment sent
        # with one: its 402 is handed back unpaid, the price in its header (docs/buyer.md).
        unpaid = request.extensions.get(UNPAID_KEY) or request.method == "HEAD"
        if response.status_code != 402 or unpaid:
            paid = request.extensions.get(CALL_RECEIPT_KEY)
            if paid is not None and redirected_after_payment(request):
                response.extensions = {**response.extensions, RECEIPT_KEY: paid}
            return response
        receipt = self._started(str(request.url))
        try:
            yield Read(response)  # reading to the end also closes it (sync or async alike)
        except AnswerTooLarge as exc:
            raise self._refuse(PaymentFailed, replace(receipt, status=402), str(exc)) from None
        if redirected_after_payment(request) or auth_retry:
            after = "a redirect from" if not auth_retry else "credentials refused on"
            raise self._refuse(
                PaymentFailed,
                replace(receipt, status=402),
                f"payment asked again after {after} a paid answer: one call pays once",
            )
        try:
            challenge = self._challenge(response, request.extensions.get(TERMS_KEY))
        except MalformedPayment as exc:
            what = "" if isinstance(exc, _OffTerms) else "malformed challenge: "
            raise self._refuse(PaymentFailed, receipt, what + exc.message) from None
        receipt = offered(receipt, challenge.offer, challenge.version)
        prepared = yield from self._prepare(
            challenge.offer, challenge.version, challenge.resource, receipt
        )
        try:
            retry, signed, receipt = self._retry(request, prepared)
        except BaseException:
            self._spent(prepared.reservation, False)
            raise
        left = True
        try:
            try:
                paid = yield Send(retry)
            except BaseException as exc:
                # if it left, it may be settled
                left = not (isinstance(exc, NEVER_SENT) or getattr(exc, NEVER_SENT_MARK, False))
                self._unanswered(receipt, exc, left=left)
                raise
            if paid.has_redirect_location:
                request.extensions[PAID_CALL_KEY] = weakref.ref(request)
            elif paid.status_code in (401, 407):  # an Auth flow may send it again at once
                request.extensions[_AUTH_REFUSED_KEY] = True
            answered = yield from self._answered(paid, signed, receipt, prepared.params)
            if paid.has_redirect_location:  # the hops' answers carry the call's receipt
                request.extensions[CALL_RECEIPT_KEY] = answered.extensions.get(RECEIPT_KEY)
            return answered
        finally:
            # A signed guarantee has left the client: it counts against the budgets whatever
            # the seller says became of it (a refund or a refusal cannot be verified from here,
            # and the seller still holds a signature it could settle later).
            self._spent(prepared.reservation, left)

    def _unanswered(self, receipt: Receipt, error: BaseException, *, left: bool) -> None:
        """The receipt of a signed guarantee whose request got no answer. One that ``left`` (a
        timeout, a dropped connection, a cancelled call) is ``unanswered``: its ids and claims,
        to settle up later. One that never left (no connection could be opened) is
        ``not_sent``: the seller never saw it, and the budget does not count it."""
        outcome, why = (
            ("unanswered", "no answer to the paid request")
            if left
            else ("not_sent", "the paid request could not be sent")
        )
        with contextlib.suppress(Exception):  # the caller sees the transport's error
            self.ledger.append(
                replace(
                    receipt,
                    outcome=outcome,
                    reason=f"{why} ({type(error).__name__})",
                    finished_at=time.time(),
                )
            )

    def _retry(
        self, request: httpx.Request, prepared: Prepared
    ) -> tuple[httpx.Request, SignedGuarantee, Receipt]:
        """The caller's request again, with the signed guarantee in the version's header."""
        signed, receipt = self._sign(prepared)
        offer = prepared.offer
        if prepared.version == 2:
            payload: Any = PaymentPayload(
                payload=signed.to_json(), accepted=offer, resource=prepared.resource
            )
            header = (PAYMENT_SIGNATURE_HEADER, encode_header(payload))
        else:
            payload = PaymentPayloadV1(
                scheme=offer.scheme, network=offer.network, payload=signed.to_json()
            )
            header = (X_PAYMENT_HEADER, encode_header(payload))
        # As raw bytes: a caller's header may hold latin-1 text, which a str would refuse. The
        # body is bytes now and its framing httpx's to set: a streamed body's Transfer-Encoding
        # beside the Content-Length httpx adds is a request strict servers refuse.
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _FRAMING]
        retry = httpx.Request(
            request.method,
            request.url,
            headers=[*headers, (header[0].encode("ascii"), header[1].encode("ascii"))],
            content=request.content,
            extensions=request.extensions,
        )
        return retry, signed, receipt

    def _answered(
        self, paid: httpx.Response, signed: SignedGuarantee, receipt: Receipt, params: CoreParams
    ) -> Flow:
        """The seller's answer to the paid retry, with its receipt (or the refusal)."""
        result = self._result(paid)
        # The id of what was signed and sent, whatever the seller says: the Core can say
        # what became of it (a seller's word is not proof of a refund; docs/buyer.md)
        own = (
            "0x"
            + guarantee_id(params.domain.chain_id, signed.claims.tab_id, signed.claims.req_id).hex()
        )
        receipt = replace(receipt, guarantee_id=own)
        if paid.status_code == 402:
            self._forget(params)
            try:
                yield Read(paid)
            except AnswerTooLarge as exc:
                raise self._refuse(PaymentFailed, replace(receipt, status=402), str(exc)) from None
            except BaseException as exc:  # cut, late, cancelled: what left is kept (docs/buyer.md)
                self._unanswered(replace(receipt, status=402), exc, left=True)
                raise
            reason = (
                _text((result or {}).get("errorReason"))
                or self._challenge_error(paid)
                or "refused after payment"
            )
            kind = InsufficientCollateral if reason == "insufficient_collateral" else PaymentFailed
            raise self._refuse(kind, replace(receipt, status=402), reason)
        certificate = _certificate_of(result)
        verified = None
        if certificate is not None and params.public_key is not None:
            verified = verify_certificate(
                certificate,
                signed.claims,
                params.public_key,
                guarantee_domain=params.guarantee_domain,
            )
        status = paid.status_code
        said_refunded = result is not None and result.get("success") is False
        # A certificate that checks out says the Core holds the guarantee payable: a seller
        # that also says "refunded" contradicts itself, and the receipt keeps the charge.
        refunded = said_refunded and verified is not True
        why = f"seller answered {status} and refunded" if refunded else None
        if said_refunded and not refunded:
            why = (
                f"seller answered {status} and said refunded, but the Core certified the guarantee"
            )
        if result is None and not 200 <= status < 300:  # a server's own error page, say
            why = f"seller answered {status} without a payment result: no charge confirmed"
        named = _text((result or {}).get("transaction"))
        if named is not None and named.lower() != own:
            named_too = f"seller named another guarantee, {named[:80]}"
            why = f"{why}; {named_too}" if why else named_too
        receipt = replace(
            receipt,
            outcome="payment_failed" if refunded else "paid",
            status=status,
            finished_at=time.time(),
            reason=why,
            certificate=certificate,
            certificate_verified=verified,
        )
        self.ledger.append(receipt)
        paid.extensions = {**paid.extensions, RECEIPT_KEY: receipt}
        if receipt.outcome == "paid":
            report_paid(receipt)  # e.g. linked to the request that funds it (docs/buyer.md)
        return paid

    def _forget(self, params: CoreParams) -> None:
        """Read the Core's parameters afresh for the next payment: one signed with these was
        refused (a wrong answer once, or a Core whose domain changed; docs/buyer.md)."""
        with self._params_lock:
            for url in [url for url, known in self._params.items() if known is params]:
                del self._params[url]

    # -- pieces --------------------------------------------------------------------------------

    def _challenge(self, response: httpx.Response, terms: Receipt | None = None) -> _Challenge:
        header = response.headers.get(PAYMENT_REQUIRED_HEADER)
        if header is not None:
            required = decode_payment_required(header)
            offers, version, resource = list(required.accepts), 2, required.resource
        else:
            try:
                body = PaymentRequiredV1.model_validate_json(response.content)
            except ValueError:
                raise MalformedPayment(
                    "402 without a PAYMENT-REQUIRED header or a v1 JSON body"
                ) from None
            offers = [r.to_v2() for r in body.accepts]
            version = 1
            resource = ResourceInfo(url=body.accepts[0].resource) if body.accepts else None
        usable = []
        for offer in offers:
            try:
                get_network(offer.network)
                amount = parse_amount(offer.amount)  # 0: no guarantee, no decoy hiding one
                parse_address(offer.pay_to)  # a decoy that names no seller hides no offer
            except Exception:
                continue
            if amount and offer.scheme == SCHEME and self.policy.allows(offer.network, offer.asset):
                usable.append(offer)
        if not usable:
            raise MalformedPayment(
                "no offer this client can pay (scheme, network, asset or an amount of 0)"
            )
        if terms is not None:
            usable = [offer for offer in usable if _on_terms(offer, terms)]
            if not usable and terms.claims is None:  # no first slice was signed
                raise _OffTerms("no offer on the stream's terms: its first slice was not paid")
            if not usable:
                raise _OffTerms(
                    f"no offer on the stream's terms: at most {terms.amount} of {terms.asset} "
                    f"on {terms.network} to {terms.seller}, as its first slice"
                )
        return _Challenge(min(usable, key=_cost), version, resource)

    @staticmethod
    def _result(response: httpx.Response) -> dict[str, Any] | None:
        value = response.headers.get(PAYMENT_RESPONSE_HEADER) or response.headers.get(
            X_PAYMENT_RESPONSE_HEADER
        )
        if not value:
            return None
        try:
            return decode_header_json(value)
        except MalformedPayment:
            return None

    @staticmethod
    def _challenge_error(response: httpx.Response) -> str | None:
        header = response.headers.get(PAYMENT_REQUIRED_HEADER)
        try:
            if header:
                return _text(decode_payment_required(header).error)
            return _text(loads(response.content).get("error"))
        except Exception:
            return None


def _cost(offer: PaymentRequirements) -> tuple[int, Fraction]:
    return cost(offer.network, offer.asset, parse_amount(offer.amount))


def cost(network: str, asset: str, amount: int) -> tuple[int, Fraction]:
    """How an offer ranks: dollar tokens first, by value (amounts scaled by decimals: 2 units
    of an 18-decimal token do not undercut $0.01 of USDC), then other registered tokens (their
    values are not dollars), then unknown tokens."""
    token = find_asset(network, asset)
    if token is None:
        return 2, Fraction(amount)
    return (0 if token in dollar_assets() else 1), Fraction(amount, 10**token.decimals)


class _OffTerms(MalformedPayment):
    """A slice's challenge asks more, or other terms, than the stream's first slice."""


def _on_terms(offer: PaymentRequirements, terms: Receipt) -> bool:
    """Whether ``offer`` sells on ``terms`` (a paid receipt): same payTo, network and asset,
    for no more than its amount."""
    return (
        offer.pay_to.lower() == (terms.seller or "").lower()
        and offer.network == terms.network
        and offer.asset.lower() == (terms.asset or "").lower()
        and parse_amount(offer.amount) <= (terms.amount or 0)
    )


def _text(value: object) -> str | None:
    """A seller's string field (a guarantee id, a reason), or None when it sent another type:
    what a seller says after the payment is reported, never trusted to be well formed."""
    return value[:500] if isinstance(value, str) and value else None


def _certificate_of(result: dict[str, Any] | None) -> dict[str, str] | None:
    """The certificate a result header's ``extra`` carries, if it is one."""
    extra = (result or {}).get("extra")
    found = extra.get("certificate") if isinstance(extra, dict) else None
    if not isinstance(found, dict):
        return None
    claims, signature = found.get("claims"), found.get("signature")
    if isinstance(claims, str) and isinstance(signature, str):
        return {"claims": claims, "signature": signature}
    return None
