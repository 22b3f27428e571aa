"""The Core operator's BLS12-381 key (min-pk, basic scheme) and certificates.

Public key in G1 (48 bytes), signatures in G2 (96 bytes), DST
``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_`` — the scheme 4Mica's own
Core and SDK use, so certificates from our Core verify with theirs.
Signing costs about half a millisecond, so it never runs on the request
path: the capacity lock is the acceptance, the certificate follows.

The Core makes a certificate once and stores it with its guarantee: the stored
guarantee is read in one transaction, signed outside any transaction (no lock is
held across a BLS signature), and filed in a second one (docs/architecture.md,
"Certificates").
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blspy import BasicSchemeMPL, G1Element, G2Element

from ..errors import CoreError
from ..guarantee import GuaranteeClaims, SignedGuarantee, certificate_message
from ..networks import get_network
from .common import guarantee_id_form, guarantee_row
from .config import Domains
from .store import Store, Tx

__all__ = ["Certificate", "Certifying", "Operator"]


@dataclass(frozen=True, slots=True)
class Certificate:
    """A guarantee certificate: the encoded claims and the operator's BLS signature."""

    claims: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"claims": "0x" + self.claims.hex(), "signature": "0x" + self.signature.hex()}


class Operator:
    """The Core's signing key. Never logged; ``repr`` shows the public key only."""

    __slots__ = ("_secret", "public_key")

    def __init__(self, seed: bytes) -> None:
        """``seed``: 32 secret bytes; the key is derived with EIP-2333 KeyGen."""
        if len(seed) != 32:
            raise ValueError("BLS operator seed must be 32 bytes")
        self._secret = BasicSchemeMPL.key_gen(seed)
        self.public_key: bytes = bytes(self._secret.get_g1())

    @classmethod
    def generate(cls) -> tuple[Operator, bytes]:
        """A fresh key and the 32 secret bytes to persist it."""
        seed = secrets.token_bytes(32)
        return cls(seed), seed

    def sign(self, message: bytes) -> bytes:
        return bytes(BasicSchemeMPL.sign(self._secret, message))

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            return bool(
                BasicSchemeMPL.verify(
                    G1Element.from_bytes(self.public_key), message, G2Element.from_bytes(signature)
                )
            )
        except (ValueError, RuntimeError):
            return False

    def certify(self, message: bytes) -> Certificate:
        return Certificate(message, self.sign(message))

    def __repr__(self) -> str:
        return f"Operator(public_key=0x{self.public_key.hex()[:16]}…)"


# -- certificates kept with their guarantees ------------------------------------------------


def stored_seed(tx: Tx) -> bytes:
    """The operator seed kept in the database, made on first use (by one process only)."""
    row = tx.one("SELECT value FROM fx_meta WHERE key = 'operator_seed'")
    if row:
        return bytes.fromhex(row[0])
    _, seed = Operator.generate()
    tx.execute(
        "INSERT INTO fx_meta (key, value) VALUES ('operator_seed', ?) ON CONFLICT (key) DO NOTHING",
        (seed.hex(),),
    )
    row = tx.one("SELECT value FROM fx_meta WHERE key = 'operator_seed'")
    assert row is not None
    return bytes.fromhex(row[0])


#: A guarantee refunded or cancelled gets no new certificate (one issued before it stands).
_UNPAYABLE = ("voided", "cancelled")


def _stored_or_message(row: Sequence[Any], domains: Domains) -> Certificate | bytes | None:
    """From (claims, total_amount, network, certificate, certificate_claims, state) of a
    guarantee; None for a voided or cancelled one that has no certificate yet."""
    claims_json, total, network, signature, message, state = row
    if signature:
        return Certificate(bytes.fromhex(message[2:]), bytes.fromhex(signature[2:]))
    if state in _UNPAYABLE:
        return None
    claims = GuaranteeClaims.from_json(json.loads(claims_json))
    domain = domains.guarantee(get_network(network).chain_id)
    return certificate_message(claims, domain, int(total))


def certificate_or_message(tx: Tx, guarantee_id: str, domains: Domains) -> Certificate | bytes:
    """A guarantee's stored certificate, or the message to sign for it."""
    row = guarantee_row(
        tx,
        "SELECT claims, total_amount, network, certificate, certificate_claims, state "
        "FROM fx_guarantees WHERE guarantee_id = ?",
        guarantee_id,
    )
    found = _stored_or_message(row, domains)
    if found is None:
        raise CoreError(
            f"guarantee {guarantee_id} is {row[5]}: no certificate is made for it",
            reason="guarantee_not_payable",
            status=409,
        )
    return found


def certificates_or_messages(
    tx: Tx, guarantee_ids: Sequence[str], domains: Domains
) -> list[tuple[str, Certificate | bytes]]:
    """:func:`certificate_or_message` of each known guarantee of ``guarantee_ids`` that has or
    may get one, in one read."""
    guarantee_ids = [gid for gid in guarantee_ids if guarantee_id_form(gid)]  # others name none
    if not guarantee_ids:
        return []
    marks = ", ".join("?" for _ in guarantee_ids)
    rows = tx.all(
        "SELECT guarantee_id, claims, total_amount, network, certificate, certificate_claims, "
        f"state FROM fx_guarantees WHERE guarantee_id IN ({marks})",
        tuple(guarantee_ids),
    )
    found = ((r[0], _stored_or_message(r[1:], domains)) for r in rows)
    return [(gid, item) for gid, item in found if item is not None]


_SAVE = (
    "UPDATE fx_guarantees SET certificate = ?, certificate_claims = ? WHERE guarantee_id = ? "
    "AND certificate IS NULL AND state NOT IN ('voided', 'cancelled')"
)


def save(tx: Tx, guarantee_id: str, cert: Certificate) -> Certificate:
    """File a certificate signed outside any transaction; the one the guarantee holds now
    (another process may have filed one first). A guarantee voided or cancelled since it was
    read gets none: ``guarantee_not_payable``."""
    stored = save_many(tx, {guarantee_id: cert})
    if guarantee_id not in stored:
        raise CoreError(
            f"guarantee {guarantee_id} was refunded or cancelled: no certificate is made for it",
            reason="guarantee_not_payable",
            status=409,
        )
    return stored[guarantee_id]


def save_many(tx: Tx, certs: dict[str, Certificate]) -> dict[str, Certificate]:
    """:func:`save` of each certificate; the certificates the guarantees hold now (none for
    those voided or cancelled since they were read)."""
    if not certs:
        return {}
    tx.many(_SAVE, (("0x" + c.signature.hex(), "0x" + c.claims.hex(), g) for g, c in certs.items()))
    marks = ", ".join("?" for _ in certs)
    rows = tx.all(
        "SELECT guarantee_id, certificate, certificate_claims FROM fx_guarantees "
        f"WHERE guarantee_id IN ({marks}) AND certificate IS NOT NULL",
        tuple(certs),
    )
    return {r[0]: Certificate(bytes.fromhex(r[2][2:]), bytes.fromhex(r[1][2:])) for r in rows}


def sign_missing(
    operator: Operator, found: list[tuple[str, Certificate | bytes]]
) -> tuple[dict[str, Certificate], dict[str, Certificate]]:
    """Every certificate of ``found`` (in its order), signing each message there; and the
    ones signed now, still to be saved."""
    done: dict[str, Certificate] = {}
    fresh: dict[str, Certificate] = {}
    for gid, item in found:
        if isinstance(item, Certificate):
            done[gid] = item
        else:
            done[gid] = fresh[gid] = operator.certify(item)
    return done, fresh


class Certifying:
    """The certificates of :class:`~.ledger.Core` (a mixin of the facade: needs its ``store``,
    ``operator`` and domains). Each reads in one transaction, signs outside any, files in a
    second one."""

    store: Store
    operator: Operator
    _domains: Domains

    def certify(self, guarantee_id: str) -> Certificate:
        """The Core's BLS certificate for an accepted guarantee (made once, then stored)."""
        with self.store.transaction(write=False) as tx:
            found = certificate_or_message(tx, guarantee_id, self._domains)
        if isinstance(found, Certificate):
            return found
        cert = self.operator.certify(found)  # outside any transaction (see above)
        with self.store.transaction() as tx:  # refused if voided or cancelled meanwhile
            return save(tx, guarantee_id, cert)

    def certify_accepted(self, signed: SignedGuarantee, network: str, total: int) -> Certificate:
        """The certificate of a guarantee just accepted (``total``: the tab's running total it
        was accepted at), signed without the database: the one :meth:`certify` files, for an
        answer that must carry it when the database cannot take it now."""
        domain = self._domains.guarantee(get_network(network).chain_id)
        return self.operator.certify(certificate_message(signed.claims, domain, total))

    def certify_many(
        self,
        guarantee_ids: Sequence[str],
        *,
        also: Callable[[Tx, dict[str, Certificate]], Any] | None = None,
    ) -> dict[str, Certificate]:
        """Certificates for many guarantees: one read, the BLS signatures, one write.

        ``also(tx, certificates)`` runs in that write (the gate files them in its records).
        """
        if not guarantee_ids:
            return {}
        with self.store.transaction(write=False) as tx:
            found = certificates_or_messages(tx, guarantee_ids, self._domains)
        done, fresh = sign_missing(self.operator, found)  # outside any transaction
        if fresh or (also is not None and done):
            with self.store.transaction() as tx:
                stored = save_many(tx, fresh)  # none for one voided meanwhile
                done = {
                    g: stored.get(g, c) for g, c in done.items() if g in stored or g not in fresh
                }
                if also is not None:
                    also(tx, done)
        return done
