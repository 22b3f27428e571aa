"""What the gate derives once per route requirements object (fourmica_x402._memo)."""

from __future__ import annotations

import pytest

from fourmica_x402._memo import ByIdentity


def test_computed_once_per_object_and_never_shared_between_equal_objects() -> None:
    calls: list[object] = []

    def derive(obj: list[int]) -> int:
        calls.append(obj)
        return sum(obj)

    memo: ByIdentity[list[int], int] = ByIdentity(derive)
    a, b = [1, 2], [1, 2]
    assert memo(a) == 3 and memo(a) == 3
    assert len(calls) == 1
    assert memo(b) == 3  # equal, but another object: derived again, not looked up by value
    assert len(calls) == 2 and calls[1] is b


def test_a_failure_is_not_remembered() -> None:
    attempts = []

    def derive(obj: dict[str, int]) -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("bad")
        return obj["x"]

    memo: ByIdentity[dict[str, int], int] = ByIdentity(derive)
    item = {"x": 7}
    with pytest.raises(ValueError):
        memo(item)
    assert memo(item) == 7
    assert memo(item) == 7
    assert len(attempts) == 2


def test_bounded_objects_built_per_request_age_out() -> None:
    memo: ByIdentity[object, int] = ByIdentity(lambda obj: id(obj), size=4)
    kept = [object() for _ in range(10)]
    for obj in kept:
        assert memo(obj) == id(obj)
    assert len(memo._items) <= 4
    # The last one is still remembered, by identity.
    assert memo._items[id(kept[-1])][0] is kept[-1]
