"""Evidence for disputes: the request hash the gate records, the evidence bundle of one paid
request, its offline verification, and dispute states (docs/operations.md, "Evidence and
disputes").

- :mod:`.request` — :func:`request_hash`, run by the gate on every paid request;
- :mod:`.bundle` — :func:`~.bundle.build_bundle`: the signed guarantee, the Core's
  certificate, the seller's record and its history, as one canonical JSON document;
- :mod:`.verify` — :func:`~.verify.verify_bundle`: every check, offline;
- :mod:`.disputes` — :class:`~.disputes.Disputes`: ``opened`` / ``resolved``, kept as history.

Only :mod:`.request` is imported here: the gate needs it, and nothing heavier.
"""

from __future__ import annotations

from .request import hash_request, request_hash

__all__ = ["hash_request", "request_hash"]
