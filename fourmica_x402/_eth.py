"""Small Ethereum primitives: keccak, EIP-55 addresses and 32-byte ABI words.

Hand-written on purpose: these sit on the request path, where eth-abi and
eth-utils cost tens of microseconds per call. Every function here is
cross-checked against eth-abi / eth-utils in the test suite.
"""

from __future__ import annotations

import functools
import re

import sha3  # safe-pysha3: the fastest keccak-256 binding on CPython

__all__ = [
    "ZERO_ADDRESS",
    "Dyn",
    "abi_encode_dynamic",
    "address_word",
    "checksum_address",
    "keccak",
    "parse_address",
    "uint_word",
]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_UINT256_MAX = (1 << 256) - 1


def keccak(data: bytes) -> bytes:
    """Keccak-256 (the Ethereum variant, not NIST SHA3-256)."""
    return sha3.keccak_256(data).digest()


@functools.lru_cache(maxsize=8192)
def checksum_address(address: str) -> str:
    """EIP-55 mixed-case form of a 0x-prefixed 40-hex-digit address (memoized: the same
    buyers, sellers and tokens come back on every request)."""
    lower = address[2:].lower()
    digest = sha3.keccak_256(lower.encode("ascii")).hexdigest()
    return "0x" + "".join(
        ch.upper() if ch > "9" and digest[i] >= "8" else ch for i, ch in enumerate(lower)
    )


def _shown(value: object) -> str:
    """``value`` as an error message may show it: a long string only by its first characters
    and its length (a private key pasted where an address goes is never echoed)."""
    if not isinstance(value, str):  # bytes of a key, say: never its digits
        return f"a {type(value).__name__}"
    if len(value) > 12:
        return f"{value[:6]!r}… ({len(value)} characters)"
    return repr(value)


def parse_address(value: object) -> str:
    """Validate an address and return its EIP-55 form.

    All-lowercase and all-uppercase spellings are accepted; a mixed-case
    spelling must carry a correct checksum (it is a typo detector).
    Raises ``ValueError`` on anything else.
    """
    if not isinstance(value, str) or not _ADDRESS_RE.match(value):
        raise ValueError(f"not an address: {_shown(value)}")
    body = value[2:]
    fixed = checksum_address(value)
    if body != body.lower() and body != body.upper() and fixed != value:
        raise ValueError(f"bad EIP-55 checksum: {value}")
    return fixed


def parse_payee(value: object) -> str:
    """:func:`parse_address` for a ``payTo``: the zero address is refused too, since no tab is
    opened to it (docs/operations.md, "The tab endpoint"): no buyer could pay it."""
    address = parse_address(value)
    if int(address, 16) == 0:
        raise ValueError("the zero address cannot be paid (no tab is opened to it)")
    return address


def uint_word(value: int) -> bytes:
    """One ABI word holding an unsigned integer (uint8…uint256)."""
    if value < 0 or value > _UINT256_MAX:
        raise ValueError("integer out of uint256 range")
    return value.to_bytes(32, "big")


def address_word(address: str) -> bytes:
    """One ABI word holding an address (left-padded 20 bytes)."""
    return bytes(12) + bytes.fromhex(address[2:])


def _dynamic_tail(value: bytes) -> bytes:
    padded = value + bytes(-len(value) % 32)
    return uint_word(len(value)) + padded


def abi_encode_dynamic(*parts: bytes | Dyn) -> bytes:
    """ABI-encode a tuple whose members are static words or dynamic values.

    A 32-byte ``bytes`` member is an already-encoded static word; a member
    wrapped in :class:`Dyn` is a dynamic ``bytes``/``string`` value.
    """
    head: list[bytes] = []
    tail: list[bytes] = []
    head_size = 32 * len(parts)
    offset = head_size
    for part in parts:
        if isinstance(part, Dyn):
            head.append(uint_word(offset))
            encoded = _dynamic_tail(part.data)
            tail.append(encoded)
            offset += len(encoded)
        elif isinstance(part, bytes) and len(part) == 32:
            head.append(part)
        else:
            raise TypeError("static ABI members must be 32-byte words; wrap dynamic ones in Dyn")
    return b"".join(head) + b"".join(tail)


class Dyn:
    """Marks a dynamic ABI member (``bytes`` or ``string``) for :func:`abi_encode_dynamic`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | str) -> None:
        self.data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
