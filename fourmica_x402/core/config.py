"""The Core's parameters, the sandbox addresses, and the signing domains they imply."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._eth import keccak, parse_address
from ..guarantee import Eip712Domain, guarantee_domain

__all__ = ["SANDBOX_CONTRACT", "SANDBOX_REGISTRY", "CoreConfig", "Domains"]

#: Address the sandbox Core reports as its contract (no chain behind it).
SANDBOX_CONTRACT = parse_address("0x" + keccak(b"fourmica-x402 sandbox core")[-20:].hex())
#: Address of the embedded sandbox validation registry.
SANDBOX_REGISTRY = parse_address(
    "0x" + keccak(b"fourmica-x402 sandbox validation registry")[-20:].hex()
)


@dataclass(frozen=True, kw_only=True)
class CoreConfig:
    """Core parameters. Durations are seconds; all may be set down to seconds for tests."""

    tab_ttl: int = 86_400
    max_clock_skew: int = 5
    validation_timeout: float = 3_600.0
    cycle_window: float = 86_400.0
    resolution_delay: float = 6 * 3_600.0
    payment_window: float = 2 * 3_600.0
    finality: float = 2 * 3_600.0
    withdrawal_grace: float = 22 * 86_400.0
    accepted_versions: tuple[int, ...] = (1, 2)
    eip712_name: str = "4mica"
    eip712_version: str = "1"
    contract_address: str = SANDBOX_CONTRACT
    trusted_registries: tuple[str, ...] = (SANDBOX_REGISTRY,)
    #: The 32-byte BLS seed of the operator key; None: generated once and kept in the database.
    operator_seed: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _finite(self.tab_ttl) or self.tab_ttl <= 0:
            raise ValueError("tab_ttl must be positive")
        for name in (
            "cycle_window",
            "resolution_delay",
            "payment_window",
            "finality",
            "withdrawal_grace",  # negative: a withdrawal before the grace it promises
            "validation_timeout",
            "max_clock_skew",
        ):
            # NaN passes "not negative" and compares with no time: a NaN grace let a
            # withdrawal out at once on PostgreSQL (docs/operations.md, "Operator settings")
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number of seconds, not negative")


def _finite(value: float) -> bool:
    """Not NaN nor infinite (an int always is: ``math.isfinite`` would overflow on a huge one)."""
    return isinstance(value, int) or math.isfinite(value)


class Domains:
    """Per chain: the EIP-712 domain guarantees are signed in, and the guarantee domain
    separator certificates carry. Each is computed once (a keccak per request saved)."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._eip712: dict[int, Eip712Domain] = {}
        self._guarantee: dict[int, bytes] = {}

    def eip712(self, chain_id: int) -> Eip712Domain:
        domain = self._eip712.get(chain_id)
        if domain is None:
            domain = Eip712Domain(chain_id, self.config.eip712_name, self.config.eip712_version)
            self._eip712[chain_id] = domain
        return domain

    def guarantee(self, chain_id: int) -> bytes:
        value = self._guarantee.get(chain_id)
        if value is None:
            value = guarantee_domain(chain_id, self.config.contract_address)
            self._guarantee[chain_id] = value
        return value
