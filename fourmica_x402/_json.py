"""JSON from another party, read with bounded nesting (docs/architecture.md, "JSON from
another party").

``json.loads`` recurses on the C stack once per nesting level and stops only at the
interpreter's recursion limit. A library that raises that limit (py_ecc, which eth-account
imports, sets 100 000) lets a few hundred kilobytes of ``[`` overflow the C stack and kill the
process. pydantic-core's parser (jiter) stops at its own nesting limit (about 200 levels),
whatever the recursion limit is, so every body, header or answer another party wrote is read
through :func:`loads` or checked by it first.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

__all__ = ["loads", "loads_checked"]


def loads(data: str | bytes | bytearray) -> Any:
    """The JSON value of ``data``; ``ValueError`` when it is malformed or nested too deeply.
    ``NaN`` and ``Infinity`` are not JSON and are refused."""
    return pydantic_core.from_json(data, allow_inf_nan=False, cache_strings=False)


def loads_checked(data: str | bytes | bytearray, **options: Any) -> Any:
    """``json.loads(data, **options)`` (its hooks: duplicate keys, float rules) once
    :func:`loads` found the nesting bounded; ``ValueError`` else."""
    loads(data)
    return json.loads(data, **options)
