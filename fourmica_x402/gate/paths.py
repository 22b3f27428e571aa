"""Request paths a proxy, a file server and the router may read differently
(docs/architecture.md, "Which route is priced": ambiguous encodings)."""

from __future__ import annotations

from urllib.parse import unquote

from ..routes import Endpoint, RouteTable
from .types import RequestView


def ambiguous(request: RequestView) -> bool:
    """Encodings a proxy and the framework may read differently: refuse, never guess."""
    raw = request.raw_path or ""
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw or "\\" in request.path:
        return True
    if "%" in raw:
        i = raw.find("%")
        while i != -1:
            chunk = raw[i + 1 : i + 3]
            if len(chunk) < 2 or any(c not in "0123456789abcdefABCDEF" for c in chunk):
                return True
            i = raw.find("%", i + 1)
    segments = request.path.split("/")
    return ".." in segments or "." in segments or ".." in unquote(raw).split("/")


def matches_variant(routes: RouteTable, method: str, request: RequestView) -> bool:
    """A table entry that some reading of the raw path (decoded, dot and empty segments
    resolved, backslashes as slashes; the table matches with or without a trailing slash)
    would price: a proxy or a file server may read it that way."""
    raw = request.raw_path or request.path
    variants = {unquote(raw).replace("\\", "/"), raw.replace("\\", "/")}
    for variant in list(variants):
        parts: list[str] = []
        for seg in variant.split("/"):
            if seg == "..":
                if parts:
                    parts.pop()
            elif seg not in (".", ""):
                parts.append(seg)
        variants.add("/" + "/".join(parts))
    return any(routes.match(method, v) for v in variants)


def free_reaches_priced(
    routes: RouteTable, method: str, request: RequestView, endpoint: Endpoint | None
) -> bool:
    """A request the router sends to a free endpoint through a path that a file server there
    reads as a priced one (``//premium/x``, ``/a/../premium/x``; ``/premium.txt/`` at a
    catch-all): Starlette's ``StaticFiles``, Django's ``serve`` and Flask's
    ``send_from_directory`` resolve such segments themselves. Only odd paths are checked."""
    if endpoint is None:  # not served: a 404, a 405, a redirect
        return False
    path = request.path
    trailing = len(path) > 1 and path.endswith("/") and "*" in endpoint.shape
    odd = trailing or "//" in path or ambiguous(request)
    return odd and matches_variant(routes, method, request)
