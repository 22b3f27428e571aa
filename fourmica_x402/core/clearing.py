"""Netting arithmetic, written as pure functions so it can be tested on its own.

Obligations between participants become one net position each:
``net = Σ incoming − Σ outgoing``. Debtors (net < 0) owe their net debit,
creditors (net > 0) are owed their net credit, and Σ debits = Σ credits
exactly. The bilateral matrix is kept for audit; a Merkle root commits to
the net positions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .._eth import address_word, keccak

__all__ = ["Netting", "merkle_root", "pro_rata"]


@dataclass(frozen=True, slots=True)
class Netting:
    """Per participant: ``(gross_in, gross_out)``; ``net`` and ``role`` derive from them."""

    gross: dict[str, tuple[int, int]]

    def net_of(self, address: str) -> int:
        gross_in, gross_out = self.gross[address]
        return gross_in - gross_out

    def role_of(self, address: str) -> str:
        value = self.net_of(address)
        return "debtor" if value < 0 else "creditor" if value > 0 else "balanced"

    @property
    def total_debit(self) -> int:
        return sum(max(0, -self.net_of(a)) for a in self.gross)

    @property
    def total_credit(self) -> int:
        return sum(max(0, self.net_of(a)) for a in self.gross)

    @property
    def transfers(self) -> int:
        """How many net transfers settle the batch: one per debtor and one per creditor."""
        return sum(1 for a in self.gross if self.net_of(a) != 0)


def pro_rata(credit: int, collected: int, total_debit: int) -> int:
    """A creditor's share of what was collected: ``floor(credit × collected / total_debit)``.

    Floors never over-pay: the shares of all creditors sum to at most ``collected``.
    """
    if total_debit <= 0:
        return 0
    return credit * min(collected, total_debit) // total_debit


def _int256_word(value: int) -> bytes:
    return value.to_bytes(32, "big", signed=True)


def merkle_root(positions: Iterable[tuple[str, int]]) -> bytes:
    """Merkle root of ``(address, net)`` positions.

    Leaves are ``keccak(abi.encode(address, int256 net))`` sorted by address;
    inner nodes hash the sorted pair (as OpenZeppelin's MerkleProof expects);
    an odd node is carried up unchanged. An empty batch has the zero root.
    """
    level = [keccak(address_word(a) + _int256_word(n)) for a, n in sorted(positions)]
    if not level:
        return bytes(32)
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            a, b = level[i], level[i + 1]
            nxt.append(keccak(a + b if a <= b else b + a))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
