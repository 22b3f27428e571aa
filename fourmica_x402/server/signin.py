"""``/auth/*``: Sign-In with Ethereum (EIP-4361), as 4Mica's Core offers it (docs/protocol.md,
"Sign-in"), at the root of each Core API (``/chains/{chain_id}/auth/*`` for that chain's).
The official TypeScript SDK signs in there before its first Core API call unless it is given a
bearer token; without these paths every such call failed with a 404.

``POST /auth/nonce`` ``{"address"}`` hands out a one-use nonce and the message template;
``POST /auth/verify`` ``{"address", "message", "signature"}`` checks the signed message and
answers ``{"access_token", "refresh_token", "expires_in"}``; ``POST /auth/refresh``
``{"refresh_token"}`` rotates the pair; ``POST /auth/logout`` revokes a refresh token.

The tokens prove who signed in and grant nothing more: the Core API this service serves is
open, and the operator's and sellers' keys (docs/operations.md, "Keys") are the only tokens
that unlock anything. They live in this process's memory (a restart signs everyone out; the SDK
then signs in again), refresh tokens as their SHA-256 only, and nothing here logs them.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import coincurve

from fourmica_x402._eth import keccak, parse_address

from .base import Call, Reply, bad_request, error
from .core_api import chain_of

if TYPE_CHECKING:
    from .context import Service

__all__ = ["SignIn", "logout", "nonce", "refresh", "verify"]

NONCE_TTL = 300
ACCESS_TTL = 900
REFRESH_TTL = 7 * 86_400
_MAX_ENTRIES = 10_000  # per table: the oldest entry goes first past it
_SKEW = 30  # seconds a message's Issued At / Not Before may run ahead of this clock
STATEMENT = "Sign in to the 4Mica Core API"
_HEADER = " wants you to sign in with your Ethereum account:"
_FIELDS = ("URI", "Version", "Chain ID", "Nonce", "Issued At", "Expiration Time", "Not Before")


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")


def _epoch(text: str | None, name: str) -> float:
    """An RFC 3339 time of the message: with its zone (without, it would be read in this
    server's local time)."""
    try:
        when = datetime.fromisoformat(text or "")
        if when.tzinfo is not None:
            return when.timestamp()
    except (ValueError, OverflowError):
        pass
    raise bad_request(f"{name} of the message is not a time with its zone: {text!r:.40}")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fields(message: str) -> tuple[str, str, dict[str, str]]:
    """The domain, the address line and the ``Key: value`` lines of an EIP-4361 message. A
    field named twice is refused: the wallet that showed it may have read the other one."""
    lines = message.split("\n")
    if len(lines) < 2 or not lines[0].endswith(_HEADER):
        raise bad_request("message is not a Sign-In with Ethereum message")
    fields: dict[str, str] = {}
    for line in lines[2:]:
        key, sep, value = line.partition(": ")
        if sep and key in _FIELDS:
            if key in fields:
                raise bad_request(f"the message names {key} twice")
            fields[key] = value
    return lines[0].removesuffix(_HEADER), lines[1], fields


def _signer(message: str, signature: Any) -> str | None:
    """The address that personal-signed (EIP-191) ``message``, or None."""
    try:
        raw = bytes.fromhex(str(signature).removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65 or (v := raw[64] - 27 if raw[64] >= 27 else raw[64]) > 1:
        return None
    data = message.encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            raw[:64] + bytes((v,)), digest, hasher=None
        )
    except ValueError:
        return None
    return parse_address("0x" + keccak(public.format(compressed=False)[1:])[-20:].hex())


_Entry = tuple[str, int, float]


class SignIn:
    """The nonces handed out and the refresh tokens issued, bounded and thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # nonce: (address, chain id, end); refresh token's sha256: the same
        self._nonces: OrderedDict[str, _Entry] = OrderedDict()
        self._refresh: OrderedDict[str, _Entry] = OrderedDict()

    @staticmethod
    def _put(table: OrderedDict[str, _Entry], key: str, value: _Entry) -> None:
        table[key] = value
        while len(table) > _MAX_ENTRIES:
            table.popitem(last=False)

    def new_nonce(self, address: str, chain_id: int) -> tuple[str, float]:
        value, now = secrets.token_hex(16), time.time()
        with self._lock:
            self._put(self._nonces, value, (address, chain_id, now + NONCE_TTL))
        return value, now

    def use_nonce(self, value: str, address: str, chain_id: int) -> bool:
        with self._lock:
            entry = self._nonces.get(value)
            if entry is None or entry[:2] != (address, chain_id) or entry[2] < time.time():
                return False
            del self._nonces[value]
        return True

    def tokens(
        self, address: str, chain_id: int, *, rotating: str | None = None
    ) -> dict[str, Any] | None:
        """A new token pair for ``address`` on ``chain_id``; ``rotating``: the refresh token it
        replaces (None when that one is unknown, revoked, expired or another chain's)."""
        fresh = f"refresh_{secrets.token_hex(32)}"
        with self._lock:
            if rotating is not None:
                entry = self._refresh.get(_digest(rotating))
                if entry is None or entry[1] != chain_id or entry[2] < time.time():
                    return None
                del self._refresh[_digest(rotating)]
                address = entry[0]
            self._put(self._refresh, _digest(fresh), (address, chain_id, time.time() + REFRESH_TTL))
        return {
            "access_token": f"access_{secrets.token_hex(32)}",
            "refresh_token": fresh,
            "expires_in": ACCESS_TTL,
        }

    def revoke(self, token: str) -> bool:
        with self._lock:
            return self._refresh.pop(_digest(token), None) is not None


def _body(call: Call, *names: str) -> list[str]:
    if not isinstance(call.body, dict):
        raise bad_request("body must be a JSON object")
    values = [call.body.get(name) for name in names]
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, str) or not value:
            raise bad_request(f"{name} is required (a string)")
    return values  # type: ignore[return-value]


def _address(value: str) -> str:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise bad_request(f"address: {exc}") from None


def nonce(service: Service, call: Call) -> Reply:
    (raw,) = _body(call, "address")
    address, (chain_id, root) = _address(raw), chain_of(service, call)
    value, now = service.sign_in.new_nonce(address, chain_id)
    origin = service.origin(call)
    return 200, {
        "nonce": value,
        "siwe": {
            "domain": urlsplit(origin).netloc,
            "uri": origin + root,
            "chainId": chain_id,
            "statement": STATEMENT,
            "expiration": _stamp(now + NONCE_TTL),
            "issuedAt": _stamp(now),
        },
    }


def verify(service: Service, call: Call) -> Reply:
    raw, message, signature = _body(call, "address", "message", "signature")
    address = _address(raw)
    domain, line, fields = _fields(message)
    issued, now = _epoch(fields.get("Issued At"), "Issued At"), time.time()
    if line.strip().lower() != address.lower():
        return error(401, "unauthorized", "the message names another address")
    chain_id, root = chain_of(service, call)
    if fields.get("Chain ID") != str(chain_id):
        return error(401, "unauthorized", f"the message is not for chain {chain_id}")
    # What the nonce's template said: a message a buyer signed for another site is not ours.
    origin = service.origin(call)
    if domain.lower() != urlsplit(origin).netloc.lower() or fields.get("URI") != origin + root:
        return error(401, "unauthorized", "the message is for another domain or URI")
    if fields.get("Version") != "1":
        return error(401, "unauthorized", "the message is not Version 1")
    if "Expiration Time" in fields and _epoch(fields["Expiration Time"], "Expiration Time") < now:
        return error(401, "unauthorized", "the message has expired")
    ahead = max(issued, _epoch(fields["Not Before"], "Not Before") if "Not Before" in fields else 0)
    if ahead > now + _SKEW:
        return error(401, "unauthorized", "the message is not valid yet")
    if _signer(message, signature) != address:
        return error(401, "unauthorized", "the signature is not the address's")
    if not service.sign_in.use_nonce(fields.get("Nonce", ""), address, chain_id):
        return error(401, "unauthorized", "the nonce is unknown, used or expired")
    return 200, service.sign_in.tokens(address, chain_id)


def refresh(service: Service, call: Call) -> Reply:
    (token,) = _body(call, "refresh_token")
    tokens = service.sign_in.tokens("", chain_of(service, call)[0], rotating=token)
    if tokens is None:
        return error(401, "unauthorized", "the refresh token is unknown, revoked or expired")
    return 200, tokens


def logout(service: Service, call: Call) -> Reply:
    (token,) = _body(call, "refresh_token")
    return 200, {"revoked": service.sign_in.revoke(token)}
