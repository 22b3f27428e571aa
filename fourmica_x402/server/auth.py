"""Who may call what: the operator's API key and the per-seller keys (docs/operations.md, "Keys").

The operator's key (``--api-key``) may make every call. A seller key (``--seller-key
TOKEN=0xADDRESS``) acts for its own address only, so sellers sharing one service cannot
refund, cancel or pre-settle each other's payments; with keys, ``/settle`` needs one too.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from fourmica_x402._eth import parse_address
from fourmica_x402.errors import ConfigurationError

from .base import Call, Reply, error, refusal

__all__ = ["Keys"]


def _same(given: str, known: str) -> bool:
    """Constant-time token comparison. As bytes: a header may carry any Latin-1 text, which
    ``compare_digest`` refuses to compare as ``str`` (a 401, not a 500)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), known.encode("utf-8", "surrogatepass")
    )


class Keys:
    """The service's tokens, and the checks its handlers make with them."""

    def __init__(
        self,
        api_key: str | None,
        seller_keys: Mapping[str, str] | None = None,
        *,
        sandbox: bool = False,
    ) -> None:
        # A blank token would be presented by every request without an Authorization header.
        if api_key is not None and not api_key.strip():
            raise ConfigurationError("api_key is empty: give a token, or None for no key")
        if any(not token.strip() for token in seller_keys or {}):
            raise ConfigurationError("a seller key's token is empty")
        if api_key is not None and api_key in (seller_keys or {}):  # the seller would be operator
            raise ConfigurationError("a seller key's token is the operator's api_key: give another")
        self.api_key = api_key
        self.sellers = {
            token: parse_address(address) for token, address in (seller_keys or {}).items()
        }
        self.sandbox = sandbox

    def authorized(self, call: Call) -> bool:
        """The operator's key is presented, or the service has none."""
        return self.api_key is None or _same(call.bearer, self.api_key)

    def acts_for(self, call: Call) -> str | None:
        """The seller address a seller key is bound to ("" for the operator key; None: neither)."""
        token = call.bearer
        if self.api_key is not None and _same(token, self.api_key):
            return ""
        for known, address in self.sellers.items():
            if _same(token, known):
                return address
        return None

    def seller_call(self, call: Call, what: str = "void and validation calls") -> Reply | None:
        """Void and validation move money: only callers holding a key may make them.

        The ``by``/``validator`` address in the body is public (``/api/guarantees``), so
        without a key anyone could void a seller's guarantee or score their own to zero.
        A local sandbox service (``--sandbox``) without a key stays open for development.
        ``what`` names the calls in the refusal. None: the call may go on.
        """
        if self.api_key is None and not self.sellers and not self.sandbox:
            return refusal(
                403,
                f"start the service with --api-key to accept {what}",
                "api_key_required",
            )
        if (self.api_key is not None or self.sellers) and self.acts_for(call) is None:
            return refusal(401, "unauthorized", "unauthorized")
        return None

    def settles_for(self, call: Call, pay_to: str | None = None) -> Reply | None:
        """``/settle`` on a service with keys: the operator's key, or a seller key bound to the
        payment's ``payTo`` (None: not read yet, the key alone is checked). Settling a buyer's
        payment first would make its seller refuse the buyer. A service without keys leaves
        ``/settle`` open, as the official facilitator does. None: the call may go on."""
        if self.api_key is None and not self.sellers:
            return None
        if self.acts_for(call) is None:
            return refusal(401, "unauthorized", "unauthorized")
        try:
            return None if pay_to is None else self.not_yours(call, parse_address(pay_to))
        except ValueError:
            return None  # an unreadable payTo: the settle itself refuses the payment

    def not_yours(self, call: Call, address: str) -> Reply | None:
        """A seller key acts for its own address only (None: ``address`` is the caller's)."""
        bound = self.acts_for(call)
        if bound and bound != address:
            return error(403, "key_not_for_address", f"this key acts for {bound} only")
        return None
