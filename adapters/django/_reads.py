"""How a re_path's regex reads as the paths it serves (docs/architecture.md, "Which route is
priced")."""

import re

__all__ = ["reads"]

#: What a regex adds to the path it reads: inline flags, anchors, escapes of punctuation.
_FLAGS, _END, _ESCAPE = r"\(\?[aiLmsux]+\)\^?|\\A", r"(?<!\\)(?:\$|\\Z)\Z", r"\\([-./~&#])"


def reads(route: str) -> str:
    r"""A route as the paths it serves read: ``(?i)^v\.1\/(?P<doc>\w+)$`` is
    ``v.1/(?P<doc>\w+)``, so that ``"GET /v.1/*"`` prices it (docs/architecture.md, "Which
    route is priced"); a path() route is left as it is."""
    return re.sub(_ESCAPE, r"\1", re.sub(_END, "", re.sub(_FLAGS, "", route)))
