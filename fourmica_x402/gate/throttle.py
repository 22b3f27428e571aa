"""The throttle: who keeps sending invalid payments is slowed down (429), and only them.

In-process, per key, in a sliding window (``throttle_failures`` per ``throttle_window``
seconds). Asking for terms (a request without a payment) is never throttled.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time

from ..errors import Reason, Throttled
from .types import Response, error_response

#: Keys counted at most (memory under a flood of addresses): past it, stale keys go first,
#: then the ones not blocked, oldest first; a blocked key goes last.
MAX_KEYS = 100_000


class Throttle:
    """Counts invalid payments per key in a sliding window (in-process)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str | None) -> float:
        """Seconds until ``key`` may try again (0: not blocked)."""
        if not key:
            return 0.0
        now = time.monotonic()
        with self._lock:
            hits = [t for t in self._hits.get(key, ()) if t > now - self.window]
            if hits:
                self._hits[key] = hits
            else:  # asked about, never (or no longer) counted: nothing to keep
                self._hits.pop(key, None)
            if len(hits) >= self.limit:
                return hits[0] + self.window - now
        return 0.0

    def hit(self, *keys: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > MAX_KEYS:
                self._prune(now)
            for key in keys:
                if key:
                    self._hits.setdefault(key, []).append(now)

    def _prune(self, now: float) -> None:
        """Down to half of :data:`MAX_KEYS` (so the next prune is as far off): a flood of new
        keys must not clear who is blocked (it would unblock them)."""
        live = {k: [t for t in h if t > now - self.window] for k, h in self._hits.items()}
        live = {k: h for k, h in live.items() if h}
        room = MAX_KEYS // 2
        if len(live) > room:
            blocked = [k for k, h in live.items() if len(h) >= self.limit][-room:]
            others = [k for k, h in live.items() if len(h) < self.limit]
            kept = others[len(others) - (room - len(blocked)) :] if room > len(blocked) else []
            live = {k: live[k] for k in kept + blocked}  # the newest of each
        self._hits = live

    def refused(self, client: str | None, payer: str, reason: str | None) -> None:
        """Throttle who caused a refusal, and only them.

        An invalid signature proves nothing about the claimed payer (anyone could name a
        victim), nor does a refusal made before the signature is checked (docs/protocol.md,
        "Acceptance"): those count against the client address. A refusal of a properly signed
        payment (no collateral left, a replay, a mismatch) counts against that payer at that
        address (:meth:`payer_key`): never against everyone else behind the address (a NAT, a
        proxy, an agent platform), and never against the payer elsewhere — a signature shows
        the payer signed it once, not who sends it now, so whoever replays a used payment
        must not lock its payer out.
        """
        if reason in (
            Reason.INVALID_SIGNATURE,
            Reason.MALFORMED_PAYMENT,
            Reason.UNSUPPORTED_SCHEME,
            Reason.UNSUPPORTED_VERSION,
            Reason.INVALID_VALIDATION_POLICY,
            Reason.UNTRUSTED_VALIDATION_REGISTRY,
        ):
            self.hit(client)
        else:
            self.hit(self.payer_key(payer, client))

    @staticmethod
    def sender(client: str | None) -> str | None:
        """The key of a client address: an IPv6 address by its /64 (one host's or site's
        share: rotating addresses within it evades nothing), any other as it is."""
        return _prefix(client) if client and ":" in client else client

    @staticmethod
    def payer_key(payer: str, client: str | None) -> str:
        """The key a payer's refused payments count under: the payer at this client address."""
        return f"{payer}@{client}" if client else payer

    @staticmethod
    def answer(wait: float) -> Response:
        """The 429 for a key blocked ``wait`` more seconds."""
        exc = Throttled(retry_after=int(wait) + 1)
        return error_response(
            429, exc.reason, "too many invalid payments; slow down", exc.headers()
        )


@functools.lru_cache(maxsize=4096)
def _prefix(address: str) -> str:
    try:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    except ValueError:
        return address
