"""The Core: collateral, tabs, guarantee acceptance, clearing cycles, withdrawals.

    >>> core = Core("sqlite:///fourmica.db")                       # doctest: +SKIP
    >>> core.deposit(buyer, 5_000_000, network="eip155:84532")     # doctest: +SKIP

See :class:`Core` for the operations and :mod:`.ledger` for the concurrency rules.
"""

from .alerts import AlertRules
from .certs import Certificate, Operator
from .ledger import SANDBOX_CONTRACT, SANDBOX_REGISTRY, Core, CoreConfig
from .models import (
    Acceptance,
    Alert,
    Cycle,
    CyclePair,
    CyclePosition,
    Event,
    Expected,
    GuaranteeRecord,
    Position,
    Tab,
    Withdrawal,
)
from .store import Conflict, Store, StoreUnavailable, open_store

__all__ = [
    "SANDBOX_CONTRACT",
    "SANDBOX_REGISTRY",
    "Acceptance",
    "Alert",
    "AlertRules",
    "Certificate",
    "Conflict",
    "Core",
    "CoreConfig",
    "Cycle",
    "CyclePair",
    "CyclePosition",
    "Event",
    "Expected",
    "GuaranteeRecord",
    "Operator",
    "Position",
    "Store",
    "StoreUnavailable",
    "Tab",
    "Withdrawal",
    "open_store",
]
