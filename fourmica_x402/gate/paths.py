"""Request paths a proxy, a file server and the router may read differently
(docs/architecture.md, "Which route is priced": ambiguous encodings)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

from ..routes import Endpoint, Route, RouteTable
from ..templates import compile_pattern, specificity
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


def matches_variant(
    routes: RouteTable,
    method: str,
    request: RequestView,
    endpoints: Iterable[Endpoint] = (),
    besides: Route | None = None,
) -> bool:
    """A table entry, or a route of ``endpoints`` that the table or its marker prices for
    ``method`` (read as its router shapes it: a converter spanning segments is ``*``), that
    some reading of the raw path (decoded, dot and empty segments resolved, backslashes as
    slashes; the table matches with or without a trailing slash) would price: a proxy or a
    file server may read it that way. ``besides``: the route pricing the request, left out."""
    raw = request.raw_path or request.path
    # and the path as routed: a raw one handed over whole (an absolute-form target,
    # http://host/./x) or under a script name written otherwise (/%61pi/./x) never lines up
    variants = {unquote(raw).replace("\\", "/"), raw.replace("\\", "/")}
    variants.add(request.path.replace("\\", "/"))
    for variant in list(variants):
        parts: list[str] = []
        for seg in variant.split("/"):
            if seg == "..":
                if parts:
                    parts.pop()
            elif seg not in (".", ""):
                parts.append(seg)
        variants.add("/" + "/".join(parts))

    # What prices each variant: the table's entry and the priced routes it fits, the most
    # specific first (a dearer /docs/premium mount's own index, /docs/premium/, is not the
    # cheaper /docs one's because /docs/* fits /docs/premium too); a tie counts as another.
    priced = [(e.shape, r) for e in endpoints if (r := routes.for_endpoint(method, e))]
    shapes = [(compile_pattern(s), specificity(r.method, s), r) for s, r in priced if s[:1] == "/"]
    for variant in variants:
        found = [
            (specificity(r.method, r.pattern), r) for r in [routes.match(method, variant)] if r
        ]
        found += [(rank, r) for shape, rank, r in shapes if shape.match(variant)]
        first = min((rank for rank, _ in found), default=None)
        if found and (besides is None or any(r.key != besides.key for k, r in found if k == first)):
            return True
    return False


def reaches_priced(
    routes: RouteTable,
    method: str,
    request: RequestView,
    endpoint: Endpoint | None,
    endpoints: Iterable[Endpoint] = (),
    route: Route | None = None,
) -> bool:
    """A request the router sends to a free endpoint (or one ``route`` prices) through a path
    that a file server there reads as one priced otherwise (``//premium/x``, ``/a/../premium/x``;
    ``/premium.txt/`` at a catch-all): Starlette's ``StaticFiles``, Django's ``serve`` and
    Flask's ``send_from_directory`` resolve such segments themselves, and a cheaper mount must
    not sell a dearer one's files. Only odd paths are checked; ``endpoints``: the app's routes,
    as in :func:`matches_variant`."""
    if endpoint is None:  # not served: a 404, a 405, a redirect
        return False
    path = request.path
    trailing = len(path) > 1 and path.endswith("/") and "*" in endpoint.shape
    odd = trailing or "//" in path or ambiguous(request)
    return odd and matches_variant(routes, method, request, endpoints, besides=route)
