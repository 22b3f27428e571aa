"""``LocalFacilitator``: the Facilitator protocol, in-process, over the embedded Core."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PaymentError
from ..networks import networks
from ..wire import SCHEME, PaymentPayload, PaymentPayloadV1, PaymentRequirements, VerifyResponse

if TYPE_CHECKING:
    from ..core import Core
    from ..core.models import Acceptance, Tab
    from ..core.store import Tx
    from ..guarantee import SignedGuarantee
    from . import SettleResult

__all__ = ["LocalFacilitator"]

T = TypeVar("T")


def _settled(accepted: Acceptance) -> SettleResult:
    from . import SettleResult

    return SettleResult(
        success=True,
        network=accepted.network,
        payer=accepted.payer,
        guarantee_id=accepted.guarantee_id,
        tab_id=accepted.tab_id,
        req_id=accepted.req_id,
        amount=accepted.amount,
        state=accepted.state,
    )


class LocalFacilitator:
    """Settle guarantees against an embedded :class:`~fourmica_x402.core.Core`.

    Async twins run the database work in a worker thread, so a busy SQLite
    file never stalls the event loop.
    """

    def __init__(self, core: Core) -> None:
        self.core = core

    def supported(self) -> list[dict[str, Any]]:
        return [
            {"x402Version": version, "scheme": SCHEME, "network": n.caip2}
            for n in networks()
            for version in (1, 2)
        ]

    def open_tab(
        self,
        *,
        user: str,
        recipient: str,
        network: str,
        asset: str,
        guarantee_version: int,
        ttl_seconds: int | None = None,
    ) -> Tab:
        return self.core.open_tab(
            user,
            recipient,
            network=network,
            asset=asset,
            guarantee_version=guarantee_version,
            ttl_seconds=ttl_seconds,
        )

    def verify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> VerifyResponse:
        from . import expected_from_requirements, signed_from_payload

        try:
            expected = expected_from_requirements(requirements)
            payer = self.core.verify(signed_from_payload(payload, requirements), expected)
        except PaymentError as exc:
            return VerifyResponse(is_valid=False, invalid_reason=exc.reason)
        return VerifyResponse(is_valid=True, payer=payer)

    def settle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> SettleResult:
        from . import signed_from_payload

        try:
            signed = signed_from_payload(payload, requirements)
        except PaymentError as exc:
            return self._refused(requirements, exc)
        return self.settle_signed(signed, requirements)[0]

    def settle_signed(
        self,
        signed: SignedGuarantee,
        requirements: PaymentRequirements,
        also: Callable[[Tx, SettleResult], T] | None = None,
        *,
        nowait: bool = False,
    ) -> tuple[SettleResult, T | None]:
        """Settle an already decoded guarantee; ``also(tx, result)`` runs in the acceptance's
        transaction (the gate writes its record there) and its value is returned beside."""
        from . import expected_from_requirements

        made: list[Any] = []  # the result (made once: the record and the answer share it)

        def then(tx: Tx, accepted: Acceptance) -> None:
            made[:] = [_settled(accepted)]
            if also is not None:
                made.append(also(tx, made[0]))

        try:
            accepted = self.core.accept(
                signed, expected_from_requirements(requirements), also=then, nowait=nowait
            )
        except PaymentError as exc:
            return self._refused(requirements, exc), None
        if not made:
            return _settled(accepted), None
        return made[0], made[1] if len(made) > 1 else None

    @staticmethod
    def _refused(requirements: PaymentRequirements, exc: PaymentError) -> SettleResult:
        from . import SettleResult

        return SettleResult(success=False, network=requirements.network, error_reason=exc.reason)

    def certify(self, guarantee_id: str) -> dict[str, str]:
        return self.core.certify(guarantee_id).to_json()

    def void(self, guarantee_id: str, *, by: str) -> None:
        self.core.void(guarantee_id, by=by)

    def post_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> None:
        self.core.post_validation(guarantee_id, validator=validator, score=score, tag=tag)

    async def asupported(self) -> list[dict[str, Any]]:
        return self.supported()

    async def aopen_tab(self, **kwargs: Any) -> Tab:
        return await asyncio.to_thread(lambda: self.open_tab(**kwargs))

    async def averify(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> VerifyResponse:
        return await asyncio.to_thread(self.verify, payload, requirements)

    async def asettle(
        self, payload: PaymentPayload | PaymentPayloadV1, requirements: PaymentRequirements
    ) -> SettleResult:
        return await asyncio.to_thread(self.settle, payload, requirements)

    async def acertify(self, guarantee_id: str) -> dict[str, str]:
        return await asyncio.to_thread(self.certify, guarantee_id)

    async def avoid(self, guarantee_id: str, *, by: str) -> None:
        await asyncio.to_thread(lambda: self.void(guarantee_id, by=by))

    async def apost_validation(
        self, guarantee_id: str, *, validator: str, score: int, tag: str = ""
    ) -> None:
        await asyncio.to_thread(
            lambda: self.post_validation(guarantee_id, validator=validator, score=score, tag=tag)
        )
