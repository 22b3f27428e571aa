"""Text another party sends that the Core stores or looks up as given (a validation tag, a
webhook secret, an id in a path).

PostgreSQL refuses U+0000 in a text value where SQLite keeps it, and no such field means
anything with a control character in it: refused where the text comes in, both stores answer
the same (docs/protocol.md, "Reason codes").
"""

from __future__ import annotations

import re

__all__ = ["has_control"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a C0 control character (U+0000 included) or DEL."""
    return _CONTROL.search(text) is not None
