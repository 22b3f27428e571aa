"""Route templates and patterns: the notations frameworks and route tables write a route in
(``:id``, ``[id]``, ``{id}``, ``{id:int}``, ``<int:id>``, ``(?P<id>…)``, ``*``), and the matchers
the route table builds from them (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

import functools
import re

from .errors import ConfigurationError

__all__ = [
    "canonical_template",
    "compile_pattern",
    "compile_template",
    "display_template",
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


def _canonical(match: re.Match[str]) -> str:
    # A path converter spans segments: only a ``*`` entry names it, never ``:name``.
    return "*" if _converter(match) == "path" else "{}"


def canonical_template(template: str) -> str:
    """A route template with every parameter written ``{}`` (a ``path`` converter ``*``):
    ``/items/<int:id>`` → ``/items/{}``, ``/files/{p:path}`` → ``/files/*``."""
    return _PARAM.sub(_canonical, template)


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
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    if prefix_too:
        regex += "(?:/.*)?"
    return re.compile(regex + r"/?\Z", re.IGNORECASE | re.DOTALL)


_SEGMENT = re.compile(r"(?<=/):([A-Za-z_][A-Za-z0-9_]*)(?=/|\Z)|\[([A-Za-z_][A-Za-z0-9_]*)\]|\*")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ConfigurationError(f"route path must start with '/': {pattern!r}")
    body, prefix_too = pattern, False
    if body.endswith("/*"):
        body, prefix_too = body[:-2], True
    out, pos = [], 0
    for m in _SEGMENT.finditer(body):
        out.append(re.escape(body[pos : m.start()]))
        out.append(".*" if m.group(0) == "*" else "[^/]+")
        pos = m.end()
    out.append(re.escape(body[pos:]))
    regex = "".join(out)
    if prefix_too:
        regex += "(?:/.*)?"
    return re.compile(regex + r"/?\Z", re.IGNORECASE | re.DOTALL)


def specificity(method: str, pattern: str) -> tuple[int, int, int, bool]:
    """Sorts table entries most specific first: more literal text (``/api/:v/premium/*`` before
    ``/api/*``), then fewer wildcards, then fewer parameters, then a named method before ``*``.
    Python's sort is stable: what ties keeps the table's order."""
    shape = canonical_template(pattern)
    literal = len(shape.replace("{}", "").replace("*", ""))
    return -literal, shape.count("*"), shape.count("{}"), method == "*"
