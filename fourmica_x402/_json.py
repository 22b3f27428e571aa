"""JSON from another party, read with bounded nesting (docs/architecture.md, "JSON from
another party").

``json.loads`` recurses on the C stack once per nesting level and stops only at the
interpreter's recursion limit. A library that raises that limit (py_ecc, which eth-account
imports, sets 100 000) lets a few hundred kilobytes of ``[`` overflow the C stack and kill the
process. pydantic-core's parser (jiter) stops at its own nesting limit (about 200 levels),
whatever the recursion limit is, so every body, header or answer another party wrote is read
through :func:`loads` or checked by it first.

:func:`dumps` writes this library's own data (event payloads, stored settle results) with
pydantic-core's writer, about ten times faster than ``json.dumps`` on the small objects a paid
request stores.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

__all__ = ["dumps", "loads", "loads_checked"]


def loads(data: str | bytes | bytearray) -> Any:
    """The JSON value of ``data``; ``ValueError`` when it is malformed or nested too deeply.
    ``NaN`` and ``Infinity`` are not JSON and are refused."""
    return pydantic_core.from_json(data, allow_inf_nan=False, cache_strings=False)


def loads_checked(data: str | bytes | bytearray, **options: Any) -> Any:
    """``json.loads(data, **options)`` (its hooks: duplicate keys, float rules) once
    :func:`loads` found the nesting bounded; ``ValueError`` else."""
    loads(data)
    return json.loads(data, **options)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` refusing an object that names a key twice: parsers differ on
    which one wins (``{"amount": 1, "amount": 10**9}``), so refuse, never guess."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON text of ``value`` (``sort_keys``: the outer object's keys in order).
    Text ``json.dumps`` can write and pydantic-core cannot (a lone surrogate) still gets out."""
    if sort_keys and isinstance(value, dict):
        value = dict(sorted(value.items()))
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError:
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"))
