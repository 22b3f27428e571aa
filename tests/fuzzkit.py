"""Structural mutations of valid JSON requests, for the generative fuzz tests.

A :class:`Mutator` takes a valid JSON value (a payment envelope, a tab request, a Core API
body) and returns a damaged copy: a field dropped, duplicated, renamed or retyped, a number
pushed to a boundary, hex reshaped, strange unicode, deep nesting, a huge string. Everything is
drawn from one ``random.Random``, so a seed replays a run exactly. :func:`encodings` gives the
base64 flavours a header may arrive in; :func:`dumps` writes JSON that may repeat a key.

Load it by path (the suites run with ``--import-mode=importlib``)::

    fuzzkit = load_fuzzkit()
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
from dataclasses import dataclass
from typing import Any

NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**63,
    2**63 - 1,
    2**64,
    2**256,
    2**256 - 1,
    -(2**255),
    1e308,
    -0.0,
    0.5,
    "NaN",
    "Infinity",
    "-1",
    "1e400",
    "0x",
    "0x" + "f" * 64,
    "0x" + "f" * 65,
    "0x" + "1" * 200,
]
STRINGS: list[Any] = [
    "",
    " ",
    "\x00",
    "\u202e\u200b",
    "é",
    "💸" * 3,
    "\ud800",
    "a\nb",
    "../../etc/passwd",
    "<script>",
    "' OR 1=1 --",
    "%s%s%n",
    "x" * 20_000,
    "0X" + "AB" * 20,
    "0x" + "G" * 40,
]
ODDS: list[Any] = [None, True, False, [], {}, [1, "a"], {"a": {"b": None}}]
_HEX = re.compile(r"^0[xX][0-9a-fA-F]*$")
#: a marker key :func:`dumps` writes twice (the duplicate-key mutation)
DUP = "\x00dup\x00"


def _reshape_hex(rng: random.Random, value: str) -> Any:
    body = value[2:]
    choice = rng.randrange(8)
    if choice == 0:
        return value[:-1] if len(body) > 1 else value + "0"  # odd length
    if choice == 1:
        return "0X" + body.upper()
    if choice == 2:
        return body  # no 0x
    if choice == 3:
        return "0x" + "0" * 70 + body  # leading zeros, longer than 32 bytes
    if choice == 4:
        return int(body or "0", 16)  # the number itself
    if choice == 5:
        return "0x" + body + "00"
    if choice == 6:
        return " " + value + " "
    return "0x" + body.upper()


class Mutator:
    """Random structural damage to JSON values, reproducible from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _paths(self, value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        out = [prefix]
        if DUP in prefix:
            return out
        if isinstance(value, dict):
            for k, v in value.items():
                out += self._paths(v, (*prefix, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                out += self._paths(v, (*prefix, i))
        return out

    def leaf(self, current: Any) -> Any:
        """A replacement for one value: often its own kind pushed to an edge."""
        rng = self.rng
        if isinstance(current, str) and _HEX.match(current) and rng.random() < 0.6:
            return _reshape_hex(rng, current)
        if isinstance(current, bool):
            return rng.choice([*ODDS, "true", 1])
        if isinstance(current, int) and rng.random() < 0.5:
            return rng.choice([*NUMBERS, str(current), hex(current), float(current)])
        pool = rng.choice([NUMBERS, STRINGS, ODDS])
        return copy.deepcopy(rng.choice(pool))

    def mutate(self, value: Any, rounds: int | None = None) -> Any:
        value = copy.deepcopy(value)
        for _ in range(rounds or self.rng.choice([1, 1, 1, 2, 3])):
            value = self._once(value)
        return value

    def _once(self, value: Any) -> Any:
        rng = self.rng
        path = rng.choice(self._paths(value))
        if not path:
            return self._whole(value)
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        op = rng.randrange(7)
        if isinstance(parent, dict):
            if op == 0:
                del parent[key]
            elif op == 1:  # duplicate key: the second copy differs
                parent[DUP] = (key, self.leaf(parent[key]))
            elif op == 2:
                renamed = rng.choice(
                    [key.upper(), key + " ", _camel_snake(key), key[:-1], "__proto__"]
                )
                parent[renamed] = parent.pop(key)
            elif op == 3:
                parent[key] = self._nest(parent[key])
            else:
                parent[key] = self.leaf(parent[key])
        else:
            if op == 0:
                del parent[key]
            elif op == 1:
                parent.append(copy.deepcopy(parent[key]))
            else:
                parent[key] = self.leaf(parent[key])
        return value

    def _whole(self, value: Any) -> Any:
        rng = self.rng
        return rng.choice(
            [
                lambda: [value],
                lambda: self._nest(value),
                lambda: dumps(value),
                lambda: None,
                lambda: {**value, "extra": "x" * 5000} if isinstance(value, dict) else value,
            ]
        )()

    def _nest(self, value: Any) -> Any:
        return Deep(value, self.rng.choice([2, 40, 300, 3000]), self.rng.random() < 0.5)


@dataclass(frozen=True)
class Deep:
    """``value`` inside ``depth`` lists (or ``{"a": …}`` objects), written out by :func:`dumps`."""

    value: Any
    depth: int
    lists: bool


def _camel_snake(key: str) -> str:
    if "_" in key:
        head, *rest = key.split("_")
        return head + "".join(p.title() for p in rest)
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def dumps(value: Any) -> str:
    """Compact JSON; a :data:`DUP` entry ``(key, other)`` writes ``key`` a second time."""
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if k == DUP and isinstance(v, tuple):
                k, v = v
            parts.append(f"{json.dumps(k)}:{dumps(v)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, Deep):
        head, tail = ("[", "]") if value.lists else ('{"a":', "}")
        return head * value.depth + dumps(value.value) + tail * value.depth
    if isinstance(value, float) and value != value:
        return "NaN"
    try:
        return json.dumps(value, allow_nan=True)
    except (ValueError, RecursionError):
        return "null"


def encodings(rng: random.Random, text: str) -> str:
    """``text`` (JSON) as a header value, in one of the forms a header may arrive in."""
    raw = text.encode("utf-8", "surrogatepass")
    std = base64.b64encode(raw).decode()
    choice = rng.randrange(10)
    if choice == 0:
        return std.rstrip("=")
    if choice == 1:
        return base64.urlsafe_b64encode(raw).decode()
    if choice == 2:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if choice == 3:
        return std[:40] + "\t" + std[40:]
    if choice == 4:
        return text if text.isascii() else std + "="
    if choice == 5:
        return " " + std + " "
    if choice == 6:
        return std + "=="
    return std
