"""Route templates and patterns: the notations frameworks and route tables write a route in
(``:id``, ``[id]``, ``{id}``, ``{id:int}``, ``<int:id>``, ``(?P<id>…)``, ``*``), the matchers
the route table builds from them, and the framework's routes they describe (:class:`Endpoint`;
docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .routes import RouteConfig

__all__ = [
    "ClassMethods",
    "Endpoint",
    "RouterFailed",
    "canonical_template",
    "check_path",
    "check_raw_paths",
    "compile_pattern",
    "compile_template",
    "converters_in",
    "display_template",
    "matches_slash",
    "method_names",
    "path_matcher",
    "spans",
    "typed_template",
]


#: A route parameter in any of the notations frameworks and route tables use (and its name).
#: ``:name`` only as a whole path segment: ``/v1/models/{name}:predict`` and ``/items:search``
#: keep their colons as text (docs/architecture.md, "Which route is priced").
_PARAM = re.compile(
    r"(?<=/):([A-Za-z_]\w*)(?=/|\Z)|\[([A-Za-z_]\w*)\]|\{([A-Za-z_]\w*)(?::[^{}]*)?\}"
    r"|<(?:[A-Za-z_]\w*(?:\([^)]*\))?:)?([A-Za-z_]\w*)>"
)
#: A named group of a Django regex route (``re_path``): a parameter too.
_GROUP = re.compile(r"\(\?P<([A-Za-z_]\w*)>(?:[^()]|\([^()]*\))*\)")


#: A parameter's converter in the notations that name one (``{id:int}``, ``<int:id>``).
_CONVERTER = re.compile(r"\{[A-Za-z_]\w*:([^{}]*)\}|<([A-Za-z_]\w*(?:\([^)]*\))?):[A-Za-z_]\w*>")
#: The converters that mean "one path segment" in Flask, Starlette and Django.
_SEGMENT_CONVERTERS = {"", "str", "string", "default"}


def _converter(match: re.Match[str]) -> str:
    typed = _CONVERTER.fullmatch(match.group(0))
    return "" if typed is None else (typed.group(1) or typed.group(2) or "").strip().lower()


def method_names(methods: Any) -> frozenset[str]:
    """The methods a marker's ``methods=`` names (``["GET", "POST"]``), upper-cased. A string
    (``"GET"`` would be ``G``, ``E`` and ``T``), an empty list or an entry such as
    ``"GET,POST"`` names no method a request has: the handler would answer only 405."""
    names = [] if isinstance(methods, str) else list(methods)
    if not names or not all(
        isinstance(m, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", m) for m in names
    ):
        raise ConfigurationError(f"methods must be a list such as ['GET', 'POST'], not {methods!r}")
    return frozenset(m.upper() for m in names)


def canonical_template(template: str, spanning: frozenset[str] = frozenset()) -> str:
    """A route template with every parameter written ``{}``, one whose converter spans path
    segments ``*`` (``path``, and the converters named in ``spanning``): ``/items/<int:id>`` →
    ``/items/{}``, ``/files/{p:path}`` → ``/files/*``. Such a route is priced only by a ``*``
    entry, never by a one-segment ``:name``."""

    def one(match: re.Match[str]) -> str:
        name = _converter(match)
        return "*" if name == "path" or (spanning and name in spanning) else "{}"

    return _PARAM.sub(one, template)


def converters_in(template: str) -> set[str]:
    """The converters a template names that are not the one-segment default: ``{p:path}``,
    ``<int:id>`` → ``path``, ``int``; with their arguments (``regex("…")``), lower-cased."""
    found = (_converter(match) for match in _PARAM.finditer(template))
    return {name for name in found if name not in _SEGMENT_CONVERTERS}


def matches_slash(regex: str) -> bool:
    """Whether ``regex`` (a converter's) can match text holding a ``/``: a route parameter that
    spans path segments. A regex this cannot read counts as spanning."""
    try:
        return _slash(_parser.parse(regex))
    except (re.error, RecursionError, TypeError):
        return True


def spans(converter: Any) -> bool:
    """Whether a framework's path converter (a werkzeug, Starlette or Django one) matches ``/``:
    werkzeug says so itself (``part_isolating``); the others by their ``regex``."""
    if converter is None:
        return False
    isolated = getattr(converter, "part_isolating", None)
    if isolated is not None:
        return not isolated
    return matches_slash(str(getattr(converter, "regex", "[^/]+")))


_SLASH = ord("/")
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT)}
#: Character classes that hold "/".
_SLASH_CATEGORIES = {_c.CATEGORY_NOT_WORD, _c.CATEGORY_NOT_SPACE, _c.CATEGORY_NOT_DIGIT}


def _slash(items: Any) -> bool:
    for op, arg in items:
        if op is _c.ANY or (op is _c.LITERAL and arg == _SLASH):
            return True
        if (op is _c.NOT_LITERAL and arg != _SLASH) or (op is _c.IN and _in(arg)):
            return True
        if op in _REPEATS and _slash(arg[2]):
            return True
        if op is _c.SUBPATTERN and _slash(arg[-1]):
            return True
        if op is _c.BRANCH and any(_slash(branch) for branch in arg[1]):
            return True
        if op is getattr(_c, "ATOMIC_GROUP", None) and _slash(arg):
            return True
    return False  # lookarounds, anchors and back-references consume no "/" of their own


def _in(items: Any) -> bool:
    """Whether a character set holds "/"."""
    negated = bool(items) and items[0][0] is _c.NEGATE
    held = any(
        (op is _c.LITERAL and arg == _SLASH)
        or (op is _c.RANGE and arg[0] <= _SLASH <= arg[1])
        or (op is _c.CATEGORY and arg in _SLASH_CATEGORIES)
        for op, arg in items
    )
    return held != negated


@functools.lru_cache(maxsize=4096)
def typed_template(template: str) -> str:
    """A route template with each parameter written ``{converter}`` (``{}`` for one path
    segment): ``/items/<int:id>`` and ``/items/{n:int}`` → ``/items/{int}``, ``/items/<name>``
    → ``/items/{}``. Two routes of an app may differ only by their converters: a table entry
    written for one of them prices that one (docs/architecture.md, "Which route is priced")."""

    def one(match: re.Match[str]) -> str:
        name = _converter(match)
        return "{}" if name in _SEGMENT_CONVERTERS else "{" + name + "}"

    return _PARAM.sub(one, template)


def display_template(template: str) -> str:
    """A route template as people and x402 clients read it, every parameter ``{name}``:
    ``/items/<int:id>`` → ``/items/{id}``; ``*`` stays (docs/protocol.md, "Discovery")."""
    if "(?P<" in template:  # a Django regex route: its anchors go
        template = _GROUP.sub(r"{\1}", template.replace("^", "").removesuffix("$"))
    return _PARAM.sub(lambda m: "{" + next(g for g in m.groups() if g) + "}", template)


def compile_template(pattern: str) -> re.Pattern[str]:
    """A table entry as a matcher of canonical templates: ``*`` stands for anything."""
    body, prefix_too = canonical_template(pattern), False
    if body.endswith("/*"):
        body, prefix_too = body[:-2], True
    elif len(body) > 1:  # with or without its trailing slash, as the route's
        body = body.removesuffix("/")
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    if prefix_too:
        regex += "(?:/.*)?"
    return re.compile(regex + r"/?\Z", re.IGNORECASE | re.DOTALL)


def path_matcher(pattern: str) -> re.Pattern[str]:
    """A table entry as a matcher of request paths, never narrower than a router (any
    parameter, typed or not, is anything, ``/`` included; a trailing ``/*`` the bare prefix
    too): whether the entry *may* price a path the router could not resolve."""
    body = canonical_template(pattern)
    prefix_too = body.endswith("/*")
    body = body[:-2] if prefix_too else body[:1] + body[1:].removesuffix("/")
    regex = _wildcards(re.split(r"(\{\}|\*)", body.replace("{}", "*")), {})
    return re.compile(regex + ("(?:/.*)?" if prefix_too else "") + r"/?\Z", re.I | re.DOTALL)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A table entry as a matcher of request paths (an app without a router): a parameter in
    any notation (``:id``, ``[id]``, ``{id}``, ``<int:id>``) is one path segment, a ``path``
    one and ``*`` anything (docs/architecture.md, "Which route is priced")."""
    if not pattern.startswith("/"):
        raise ConfigurationError(f"route path must start with '/': {pattern!r}")
    return re.compile(_path_regex(pattern, slash=False) + r"/?\Z", re.IGNORECASE | re.DOTALL)


def _path_regex(pattern: str, *, slash: bool) -> str:
    """``compile_pattern``'s regex, before the optional ``/``: with the template's own trailing
    ``/`` (``slash``), or without it ("/report/" prices "/report" too, as "/report" "/report/")."""
    body, prefix_too = canonical_template(pattern), False
    if body.endswith("/*"):
        body, prefix_too = body[:-2], True
    elif len(body) > 1 and not slash:
        body = body.removesuffix("/")
    regex = _wildcards(re.split(r"(\{\}|\*)", body), {"{}": "[^/]+"})
    return regex + "(?:/.*)?" if prefix_too else regex


def _wildcards(parts: list[str], tokens: dict[str, str]) -> str:
    """The regex of a split template: text escaped, ``*`` anything, other ``tokens`` as given.
    Text between two ``*`` is searched for once, its first occurrence kept (the next ``*``
    takes whatever comes after: no later one can match where it cannot), in an atomic group:
    tried at every position, a long path repeating it cost O(n^k) for k such stars."""
    out, i = [], 0
    while i < len(parts):
        part, i = parts[i], i + 1
        if part == "*" and i + 1 < len(parts) and parts[i + 1] == "*":
            out.append(f"(?>.*?{re.escape(parts[i])})")
            i += 1
        else:
            out.append(".*" if part == "*" else tokens.get(part) or re.escape(part))
    return "".join(out)


def check_path(key: str, pattern: str) -> None:
    """A table key's path is decoded and has no query: a ``#``, a ``%`` escape or a query
    (``?tier=gold``, a bare ``?`` at the end) outside its parameters fails at start-up; a
    converter's own ``?`` (``<regex("colou?r"):word>``) and a Django ``re_path``'s, as its
    route reads (``/items/?``, ``/colou?r``), are no query (docs/architecture.md, "Which route
    is priced")."""
    if re.search(r"#|%[0-9A-Fa-f]{2}|\?[^/]*=|[^/)\]}]\?\Z", canonical_template(pattern)):
        raise ConfigurationError(f"route {key!r}: a key is a decoded path, no query or '#'")


def check_raw_paths(routes: Iterable[Any]) -> None:
    """An app without a router prices each path as it comes: a ``?`` outside a key's parameters
    (``"GET /report?raw"``) is a query there, never in a path (a Django ``re_path``'s is its
    router's), so the key fails at start-up (docs/architecture.md, "Which route is priced")."""
    for route in routes:
        if "?" in canonical_template(route.pattern):
            raise ConfigurationError(f"route {route.key!r}: a key is a decoded path, no query")


def look_alikes(entries: list[Any]) -> dict[str, list[Any]]:
    """Table entries (most specific first) by key, of those with look-alikes: the same template
    but for case and a trailing slash (``GET /report``, ``* /REPORT/``), which match the same
    paths (:func:`compile_pattern`); whatever their methods (the caller keeps the request's)."""
    groups: dict[str, list[Any]] = {}
    for entry in entries:
        shape = canonical_template(entry.pattern).lower()
        groups.setdefault(shape[:1] + shape[1:].removesuffix("/"), []).append(entry)
    return {entry.key: group for group in groups.values() if len(group) > 1 for entry in group}


def written_as(entries: list[Any], path: str) -> Any:
    """Of look-alike entries, the one written as ``path`` is (its trailing slash or none; in its
    case first), else the first: a router-less app may serve ``/report`` and ``/REPORT/`` as
    two routes, each at its own entry's price (docs/architecture.md, "Case and trailing slash")."""
    for flags in (re.DOTALL, re.DOTALL | re.IGNORECASE):
        for entry in entries:
            if re.match(_path_regex(entry.pattern, slash=True) + r"\Z", path, flags):
                return entry
    return entries[0]


def specificity(method: str, pattern: str) -> tuple[int, int, int, bool]:
    """Sorts table entries most specific first: more literal text (``/api/:v/premium/*`` before
    ``/api/*``), then fewer wildcards, then fewer parameters, then a named method before ``*``.
    Slashes are not text: ``/files`` before ``/files/*`` (which matches the bare prefix too), and
    ``/v1/*`` before ``/{org}/{repo}/{file}``. Python's sort is stable: ties keep the table's order."""
    shape = canonical_template(pattern)
    literal = len(re.sub(r"\{\}|[*/]", "", shape))
    return -literal, shape.count("*"), shape.count("{}"), method == "*"


class RouterFailed(Exception):
    """The framework's router raised while an adapter asked it which route a request reaches:
    an error of its own (Starlette's ``int`` convertor on a segment past Python's 4 300-digit
    limit: 400 ``unroutable_path``), or an HTTP answer a convertor gave (``path`` given: its
    ``status`` and ``headers``), which the gate gives itself when a priced route may be
    concerned and leaves to the app otherwise (docs/architecture.md, "Which route is priced")."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        headers: list[tuple[str, str]] | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        valid = isinstance(status, int) and 300 <= status <= 599
        self.status, self.headers = status if valid else 400, headers or []
        #: An HTTP answer (``path``: the request's whole path, as the router may read it).
        self.answer, self.path = path is not None, path


class ClassMethods(frozenset[str]):
    """``Endpoint.marker_methods`` of a class view priced by its methods' markers: the
    methods left out are its own handlers' (the table's), not refused by a view's marker."""


class Endpoint:
    """The endpoint a framework's router resolved for a request; adapters build one per route
    of the app and keep it (the gate caches what it priced on it).

    ``key`` is the framework's own object for the route (a Starlette route, a Flask rule, a
    Django view callable, the same under each of its URL patterns): the gate puts the endpoint
    in ``Payment.endpoint`` so that a per-handler marker can check that the payment was settled
    for *its* handler, and the router's check for *this* route. ``template`` is the route
    as the framework writes it. ``marker`` is a per-handler price (``@paid``/``Paid``) and
    ``marker_methods`` the methods it prices (None: every method the endpoint serves).
    ``methods`` are the methods the endpoint serves, when the framework says (None: any).
    ``websocket``: a WebSocket route (priced like a GET so that it is refused, never listed).
    ``spanning``: the converters of ``template`` (besides ``path``) that match ``/``, as the
    framework defines them: its parameters span path segments (``shape`` writes them ``*``).
    """

    __slots__ = (
        "_priced",
        "key",
        "marker",
        "marker_methods",
        "methods",
        "shape",
        "template",
        "typed",
        "websocket",
    )

    def __init__(
        self,
        key: Any,
        template: str,
        *,
        marker: RouteConfig | None = None,
        marker_methods: frozenset[str] | None = None,
        methods: frozenset[str] | None = None,
        websocket: bool = False,
        spanning: frozenset[str] = frozenset(),
    ) -> None:
        self.key, self.template, self.marker = key, template, marker
        #: The template as table entries are matched against it (``canonical_template``).
        self.shape = canonical_template(template, spanning)
        self.typed = typed_template(template)
        self.marker_methods = marker_methods
        self.methods, self.websocket = methods, websocket
        #: Per method: (table version, its Route or None); "?": the methods the table prices.
        self._priced: dict[str, tuple[int, Any]] = {}

    def __repr__(self) -> str:
        return f"Endpoint({self.template!r}, marker={self.marker is not None})"

    def marker_prices(self, method: str) -> bool:
        """Whether its marker prices ``method`` (``*``: every method; HEAD as GET)."""
        priced, alias = self.marker_methods, "GET" if method == "HEAD" else method
        return self.marker is not None and (priced is None or (method != "*" and alias in priced))

    def marker_decides(self, method: str) -> bool:
        """Whether its marker, not the table, decides ``method``: prices it, or (a view's
        marker) refuses it; a class view's methods its marker leaves out are the table's."""
        own = not isinstance(self.marker_methods, ClassMethods)
        return self.marker is not None and (own or self.marker_prices(method))


def marker_key(endpoint: Endpoint) -> str:
    """A per-handler marker's route key: ``"<methods> <template>"`` (``*``: every method)."""
    methods = ",".join(sorted(endpoint.marker_methods)) if endpoint.marker_methods else "*"
    return f"{methods} {endpoint.template}"


class MarkerKeys:
    """Per-handler markers' route keys (:func:`marker_key`), one table's. Two handlers at one
    path (``GET /report`` and ``POST /report``, each with its marker) would share one: a
    payment made for one would pay the other (the key is in a G-v2 payment's job hash), and
    a reprice of one would reprice the other. The later is keyed by the methods its route
    serves; still shared at different prices: ConfigurationError."""

    def __init__(self) -> None:
        self._owners: dict[str, Endpoint] = {}  # key -> the endpoint it names

    def __call__(self, endpoint: Endpoint) -> str:
        key = marker_key(endpoint)
        if self._owners.setdefault(key, endpoint) is endpoint:
            return key
        if endpoint.methods and endpoint.marker_methods is None:
            served = sorted(endpoint.methods - {"HEAD"} or endpoint.methods)
            key = f"{','.join(served)} {endpoint.template}"
            if self._owners.setdefault(key, endpoint) is endpoint:
                return key
        if self._owners[key].marker == endpoint.marker:  # one price (a Host's twin): one key
            return key
        raise ConfigurationError(
            f"two handlers at {endpoint.template!r} carry different prices under one route key "
            f"{key!r}: name each one's methods (methods=[...]) so that each can be repriced"
        )
