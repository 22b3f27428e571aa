"""Offline verification of an evidence bundle (docs/operations.md, "Evidence and disputes").

The checks run in this order; the first that fails is named (:class:`EvidenceInvalid`):

1. the file is the canonical JSON of a bundle of a known format, byte for byte;
2. its digest is the SHA-256 of its content;
3. the guarantee: claims well formed, its version label, its id (from the network's chain id
   and the claims' tab and request ids), the EIP-712 domain's chain;
4. the buyer's signature recovers to the claims' ``user_address``;
5. the certificate's message is the claims' (with the guarantee domain and the tab total);
   the guarantee domain is the one of the network's chain and the bundle's Core contract;
6. the Core's BLS signature verifies against the bundle's public key, and against the one
   the verifier trusts when given;
7. the record agrees with the claims: amount, payer, payTo, asset, network, tab and request
   ids, guarantee id; its request and response hashes are SHA-256 digests or null (a record
   made before request hashes has none: absent, not a failure);
8. the dispute history is a valid sequence of states.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._eth import parse_address
from .._json import loads_checked
from ..client.certificates import public_key_bytes, verify_certificate
from ..guarantee import (
    Eip712Domain,
    GuaranteeClaims,
    SignedGuarantee,
    certificate_message,
    guarantee_domain,
    guarantee_id,
    recover_signer,
)
from ..networks import get_network
from .canonical import FORMAT, canonical, digest_of

__all__ = ["EvidenceInvalid", "Verified", "verify_bundle"]

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class EvidenceInvalid(Exception):
    """A bundle that fails a check; the message names the check."""


@dataclass(frozen=True)
class Verified:
    guarantee_id: str
    version: str
    amount: int
    asset: str
    network: str
    payer: str
    pay_to: str
    public_key: str
    request_hash: str | None
    dispute: str | None

    def summary(self) -> str:
        return (
            f"verified: {self.version} guarantee {self.guarantee_id} on {self.network}: "
            f"{self.amount} atomic units of {self.asset} from {self.payer} to {self.pay_to}; "
            f"buyer signature, Core certificate (key {self.public_key[:18]}…) and record agree; "
            f"request hash {'recorded' if self.request_hash else 'absent (older record)'}; "
            f"dispute {self.dispute or 'none'}"
        )


def _fail(message: str) -> EvidenceInvalid:
    return EvidenceInvalid(message)


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or value[:2] != "0x":
        raise _fail(f"{what} is not 0x hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise _fail(f"{what} is not 0x hex") from None


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{what} is missing or not an object")
    return value


def verify_bundle(data: bytes, public_key: bytes | str | None = None) -> Verified:
    """Check a bundle file's exact bytes; ``public_key``: the Core key the verifier trusts.

    Returns what was verified; raises :class:`EvidenceInvalid` naming the first failed check.
    """
    try:
        document = loads_checked(data.decode("ascii"))
    except UnicodeDecodeError:  # a bundle is ASCII JSON: this is some other file
        raise _fail("not an evidence bundle: not an ASCII JSON file") from None
    except ValueError as exc:
        raise _fail(f"not an evidence bundle: malformed JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _fail(f"not an evidence bundle: the format is not {FORMAT}")
    try:
        exact = canonical(document) == data
    except ValueError:  # NaN or infinity
        exact = False
    if not exact:
        raise _fail("bundle bytes are not its canonical form (the file was changed)")
    content = _object(document.get("content"), "content")
    if document.get("digest") != digest_of(content):
        raise _fail("bundle digest does not match its content")
    return _check_content(content, public_key)


def _check_content(content: dict[str, Any], trusted: bytes | str | None) -> Verified:
    g = _object(content.get("guarantee"), "guarantee")
    try:
        claims = GuaranteeClaims.from_json(g.get("claims"))
        signed = SignedGuarantee.from_json(
            {"claims": g.get("claims"), "signature": g.get("signature"), "scheme": g.get("scheme")}
        )
    except Exception as exc:
        raise _fail(f"malformed guarantee: {exc}") from None
    if g.get("version") != f"G-v{claims.version}":
        raise _fail("guarantee version label does not match the claims")
    network = content.get("network")
    try:
        chain_id = get_network(str(network)).chain_id
    except Exception:
        raise _fail(f"unknown network {network!r:.60}") from None
    gid = "0x" + guarantee_id(chain_id, claims.tab_id, claims.req_id).hex()
    if content.get("guarantee_id") != gid:
        raise _fail("guarantee id does not match the claims and network")
    d = _object(content.get("eip712_domain"), "eip712_domain")
    if d.get("chainId") != chain_id or not all(
        isinstance(d.get(k), str) for k in ("name", "version")
    ):
        raise _fail("EIP-712 domain is not the network's")
    domain = Eip712Domain(chain_id, d["name"], d["version"])
    if recover_signer(signed, domain) != claims.user_address:
        raise _fail("buyer signature does not match userAddress")
    core = _object(content.get("core"), "core")
    cert = _object(content.get("certificate"), "certificate")
    total = g.get("total_amount")
    if (
        isinstance(total, bool)
        or not isinstance(total, int)
        or not claims.amount <= total < 1 << 256  # a uint256 word of the certificate
    ):
        raise _fail("certificate message does not match the claims (tab total)")
    domain_word = _hex(core.get("guarantee_domain"), "guarantee domain")
    if len(domain_word) != 32:  # the certificate message's first word
        raise _fail("guarantee domain is not 32 bytes of hex")
    _check_domain(domain_word, chain_id, core.get("contract_address"), signed.scheme)
    if _hex(cert.get("claims"), "certificate message") != certificate_message(
        claims, domain_word, total
    ):
        raise _fail("certificate message does not match the claims")
    key = core.get("public_key")
    try:
        public_key_bytes(str(key))
    except ValueError:
        raise _fail("Core public key is not 48 bytes of hex") from None
    if not verify_certificate(cert, claims, str(key), guarantee_domain=domain_word):
        raise _fail("Core certificate does not verify against the Core public key")
    if trusted is not None and not verify_certificate(
        cert, claims, trusted, guarantee_domain=domain_word
    ):
        raise _fail("Core certificate does not verify against the given public key")
    record = _object(content.get("record"), "record")
    _check_record(record, claims, gid, str(network))
    dispute = _check_disputes(content.get("disputes"))
    return Verified(
        gid,
        g["version"],
        claims.amount,
        claims.asset_address,
        str(network),
        claims.user_address,
        claims.recipient_address,
        str(key),
        record.get("request_hash"),
        dispute,
    )


def _check_domain(domain: bytes, chain_id: int, contract: object, scheme: str) -> None:
    """The guarantee domain the certificate signs is the one of the network's chain and the
    Core contract: an EIP-191 signature names no chain, so without this a payment accepted on
    one network would verify relabelled as one on another. A bundle made before it named the
    contract is verified without it when the buyer's EIP-712 signature names the chain."""
    if contract is None and scheme == "eip712":
        return
    if contract is None:
        raise _fail(
            "the Core contract is missing: an EIP-191 signature does not name the chain, so "
            "the network cannot be checked"
        )
    try:
        made = guarantee_domain(chain_id, parse_address(str(contract)))
    except ValueError:
        made = None
    if made != domain:
        raise _fail("guarantee domain is not the one of the network's chain and the Core contract")


def _same_address(value: object, expected: str) -> bool:
    try:
        return isinstance(value, str) and parse_address(value) == expected
    except ValueError:
        return False


def _check_record(record: dict[str, Any], claims: GuaranteeClaims, gid: str, network: str) -> None:
    amount = record.get("amount")
    if isinstance(amount, bool) or amount != claims.amount:
        raise _fail("record amount does not match the claims")
    for name, expected in (
        ("payer", claims.user_address),
        ("pay_to", claims.recipient_address),
        ("asset", claims.asset_address),
    ):
        if not _same_address(record.get(name), expected):
            raise _fail(f"record {name} does not match the claims")
    if record.get("network") != network:
        raise _fail("record network does not match the guarantee")
    if record.get("tab_id") != hex(claims.tab_id) or record.get("request_id") != hex(claims.req_id):
        raise _fail("record tab or request id does not match the claims")
    if record.get("guarantee_id") not in (None, gid):
        raise _fail("record guarantee id does not match the guarantee")
    for name in ("request_hash", "response_hash"):
        value = record.get(name)
        if value is not None and not (isinstance(value, str) and _SHA256.match(value)):
            raise _fail(f"record {name} is not a SHA-256 hex digest")


def _check_disputes(entries: object) -> str | None:
    if not isinstance(entries, list):
        raise _fail("dispute history is missing")
    state = None
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or set(entry) != {"state", "note", "at"}
            or not isinstance(entry["note"], str)
            or not isinstance(entry["at"], int | float)
            or not isinstance(entry["state"], str)  # a list or an object: not a state
            or (state, entry["state"]) not in _STEPS
        ):
            raise _fail("dispute history is not a valid sequence of states")
        state = entry["state"]
    return state


_STEPS = {(None, "opened"), ("opened", "resolved"), ("resolved", "opened")}
