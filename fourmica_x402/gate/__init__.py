"""The payment gate: the seller's flow, written once for every framework.

For a protected route (docs/architecture.md, "A paid request"): match → challenge | decode →
match offer → settle (the Core locks the buyer's collateral) → record → run the handler →
result header → delivery marker, validation score or refund.

**One flow, two drivers.** The flow is a set of generators that *yield* the I/O they need as
:class:`Call` objects and receive the results back. :meth:`Gate.run_sync` drives them for WSGI
and sync Django; :meth:`Gate.run_async` for ASGI and async Django. Adapters only translate their
framework's request into a :class:`RequestView`, call :meth:`Gate.before`, and hand the
response to a :class:`~.lifecycle.Meter` (:meth:`Gate.response_start`, :meth:`Gate.finish`).

Where things are, in the order a paid request meets them:

- :mod:`.types` — the adapter contract: ``RequestView``, ``Response``, ``BodyTap``, ``PASS``,
  ``Call``/``Flow``, ``Payment`` (what a handler gets), ``Paid`` (state between the steps);
- :mod:`.drive` — ``run_sync`` / ``run_async``, and the embedded Core's loop-or-thread writes;
- :mod:`.flow` — :class:`Gate`: construction, what adapters call at start-up, ``before()``;
- :mod:`.endpoints` — the tab endpoint and the Core API subset;
- :mod:`.challenge` — requirements, validation policy, the 402 challenge and the paywall;
- :mod:`.bundles` — minimums, bundles of units and prepaid caps: their terms and extra;
- :mod:`.stages` — staged work: a stage admitted, tied to its job, the job moved on or failed;
- :mod:`.metered` — metered streams: the stream a handler sends through, its pay endpoint;
- :mod:`.discovery` — ``GET /.well-known/x402``: the priced routes and their requirements;
- :mod:`.throttle` — who keeps sending invalid payments is slowed down;
- :mod:`.pay` — a request with a payment: decode, match, replay, hooks, settle or verify;
- :mod:`.settle` — settling and recording as one unit; settles whose answer was lost;
- :mod:`.deliver` — ``response_start`` and ``finish``: result header, score, refund, record;
- :mod:`.lifecycle` — what every adapter does around a request, written once: the paid
  response on its way out (``Meter``), start-up checks (``Startup``), per-handler markers
  (``Marker``), the app's routes (``Endpoints``);
- :mod:`.background` — the reconciler: voids, refunds and scores retried until done;
- :mod:`.nested` — a request another gate (an outer app's) settled: run on this gate's terms only.

Hooks (sync or async), set on :class:`~fourmica_x402.PaymentConfig`:

- ``on_protected_request(request, route)`` → None to continue, ``GRANT`` to
  serve without payment, ``DENY`` (403) or a :class:`Response` (anything else, or an
  exception, is 503 ``seller_hook_failed``: :mod:`.hooks`);
- ``before_settle(request, payload, requirements)`` may raise a PaymentError;
- ``after_settle(request, result)``;
- ``on_failure(request, error)``;
- ``after_delivery(payment, record_outcome)``.
"""

from __future__ import annotations

# The gate's modules call ``asyncio.to_thread`` through the module (never a copy of the
# function), so patching ``fourmica_x402.gate.asyncio.to_thread`` sees every worker-thread hop.
import asyncio as asyncio

from ..routes import Endpoint
from ..templates import RouterFailed
from .flow import Gate

# PASS and Flow are the adapters' too, left out of __all__ as before.
from .types import (  # noqa: F401
    DENY,
    GRANT,
    PAID_CACHE_CONTROL,
    PASS,
    BodyTap,
    Call,
    Flow,
    Granted,
    Headers,
    PassThrough,
    Payment,
    RequestView,
    Response,
)

__all__ = [
    "DENY",
    "GRANT",
    "PAID_CACHE_CONTROL",
    "BodyTap",
    "Call",
    "Endpoint",
    "Gate",
    "Granted",
    "Headers",
    "PassThrough",
    "Payment",
    "RequestView",
    "Response",
    "RouterFailed",
]
